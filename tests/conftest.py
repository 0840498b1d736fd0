"""Named users per role (owner, admin, finance, auditor, developer, viewer, outsider) in one org
"acme", plus a second org "other" whose ids an outsider test can aim at."""

import pytest
from django.test import Client

from audit.context import Actor
from orgs.models import Organization, User
from orgs.roles import CAPABILITIES, Role
from orgs.services import add_team_member, change_role, create_org, create_team

PASSWORD = "correct-horse-battery-staple"
ROLES = [role.value for role in Role]


def make_user(email: str) -> User:
    return User.objects.create_user(email=email, password=PASSWORD, full_name=email.split("@")[0].title())


def actor_for(user: User, role: str) -> Actor:
    return Actor(
        kind="user", id=str(user.uuid), label=user.email, role=role, user_id=user.pk, capabilities=CAPABILITIES[role]
    )


SYSTEM = Actor.system("tests")


@pytest.fixture
def org(db) -> Organization:
    owner = make_user("owner@acme.test")
    organization = create_org(actor=SYSTEM, name="Acme", slug="acme", owner=owner, require_mfa=False)
    for role in ROLES:
        if role == Role.OWNER:
            continue
        user = make_user(f"{role}@acme.test")
        organization.memberships.create(user=user, role=role)
    return organization


@pytest.fixture
def other_org(db) -> Organization:
    stranger = make_user("owner@other.test")
    organization = create_org(actor=SYSTEM, name="Other", slug="other", owner=stranger, require_mfa=False)
    create_team(actor=SYSTEM, org=organization, name="Other team")
    return organization


@pytest.fixture
def users(org) -> dict[str, User]:
    """role name -> the user holding it in `org`; "outsider" belongs to no org."""
    found = {m.role: m.user for m in org.memberships.select_related("user")}
    found["outsider"] = make_user("outsider@elsewhere.test")
    return found


@pytest.fixture
def team(org, users):
    team = create_team(actor=SYSTEM, org=org, name="Platform", description="The platform team")
    add_team_member(actor=SYSTEM, team=team, user=users["developer"])
    add_team_member(actor=SYSTEM, team=team, user=users["viewer"])
    return team


@pytest.fixture
def client_for(users):
    """client_for("admin") -> a Client signed in as that role's user."""

    def make(role: str) -> Client:
        client = Client()
        client.force_login(users[role])
        return client

    return make


@pytest.fixture
def actors(users) -> dict[str, Actor]:
    return {role: actor_for(user, role) for role, user in users.items() if role != "outsider"}


__all__ = ["PASSWORD", "ROLES", "SYSTEM", "actor_for", "change_role", "make_user"]

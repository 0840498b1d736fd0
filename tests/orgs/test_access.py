"""orgs/roles.py and orgs/access.py: what each role may do, and who gets 404 or 403."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import RequestFactory
from django.utils import timezone

from orgs.access import get_org_access, get_team_access, is_team_admin
from orgs.authentication import TokenUser
from orgs.models import ApiToken, Team, User
from orgs.roles import CAPABILITIES, MFA_REQUIRED_ROLES, Role, can_grant, role_can
from orgs.services import add_team_member, create_api_token, create_team, revoke_api_token, set_team_admin
from tests.conftest import ROLES, SYSTEM

# Who may grant whom, from DESIGN.md's role table: never more than you hold.
GRANTABLE = {
    Role.OWNER: set(ROLES),
    Role.ADMIN: set(ROLES) - {Role.OWNER},
    Role.FINANCE: {Role.FINANCE, Role.VIEWER},
    Role.AUDITOR: {Role.AUDITOR, Role.VIEWER},
    Role.DEVELOPER: {Role.DEVELOPER, Role.VIEWER},
    Role.VIEWER: {Role.VIEWER},
}


# Roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("granter", ROLES)
def test_each_role_grants_exactly_the_roles_it_covers(granter):
    assert {role for role in ROLES if can_grant(granter, role)} == GRANTABLE[granter]


@pytest.mark.parametrize("granter", ROLES)
@pytest.mark.parametrize("role", ROLES)
def test_can_grant_is_the_capability_subset_test(granter, role):
    assert can_grant(granter, role) == (CAPABILITIES[role] <= CAPABILITIES[granter])


def test_an_unknown_role_grants_nothing_and_can_nothing():
    assert not any(can_grant("root", role) for role in ROLES)
    assert not role_can("root", "org.read")
    with pytest.raises(KeyError):
        can_grant(Role.OWNER, "root")


def test_the_roles_are_ordered_as_the_design_says():
    caps = CAPABILITIES
    assert caps[Role.VIEWER] < caps[Role.DEVELOPER] < caps[Role.ADMIN] < caps[Role.OWNER]
    assert caps[Role.AUDITOR] < caps[Role.ADMIN]
    assert caps[Role.FINANCE] < caps[Role.ADMIN]
    # Finance and auditor are side by side: neither includes the other.
    assert not caps[Role.FINANCE] <= caps[Role.AUDITOR]
    assert not caps[Role.AUDITOR] <= caps[Role.FINANCE]


@pytest.mark.parametrize(
    ("role", "capability", "allowed"),
    [
        (Role.OWNER, "org.delete", True),
        (Role.OWNER, "owners.manage", True),
        (Role.ADMIN, "owners.manage", False),
        (Role.ADMIN, "org.delete", False),
        (Role.ADMIN, "members.manage", True),
        (Role.ADMIN, "credentials.manage", True),
        (Role.ADMIN, "audit.export", True),
        (Role.FINANCE, "budgets.manage", True),
        (Role.FINANCE, "spend.export", True),
        (Role.FINANCE, "members.manage", False),
        (Role.FINANCE, "keys.read", True),
        (Role.AUDITOR, "audit.export", True),
        (Role.AUDITOR, "tokens.read", True),
        (Role.AUDITOR, "budgets.manage", False),
        (Role.AUDITOR, "teams.manage", False),
        (Role.DEVELOPER, "keys.own", True),
        (Role.DEVELOPER, "keys.manage", False),
        (Role.DEVELOPER, "invitations.read", False),
        (Role.VIEWER, "teams.read", True),
        (Role.VIEWER, "members.read", False),
        (Role.VIEWER, "keys.own", False),
    ],
)
def test_role_capabilities(role, capability, allowed):
    assert role_can(role, capability) is allowed


def test_the_auditor_changes_nothing():
    assert not [cap for cap in CAPABILITIES[Role.AUDITOR] if not cap.endswith((".read", ".export"))]


def test_mfa_is_required_of_owners_and_admins_only():
    assert set(MFA_REQUIRED_ROLES) == {Role.OWNER, Role.ADMIN}


# get_org_access --------------------------------------------------------------------------


@pytest.fixture
def request_as(users):
    """request_as("admin") -> a GET request signed in as that role's user (or "anonymous")."""
    factory = RequestFactory()

    def make(role: str, token: ApiToken | None = None):
        request = factory.get("/")
        if token is not None:
            request.user, request.auth = TokenUser(token), token
        else:
            request.user = AnonymousUser() if role == "anonymous" else users[role]
            request.auth = None
        return request

    return make


@pytest.mark.parametrize("role", ROLES)
def test_every_member_reads_their_org(org, request_as, users, role):
    access = get_org_access(request_as(role), "acme")
    assert (access.org, access.role) == (org, role)
    assert access.actor.kind == "user"
    assert (access.actor.user_id, access.actor.label, access.actor.role) == (users[role].pk, f"{role}@acme.test", role)
    assert access.actor.capabilities == CAPABILITIES[role]


@pytest.mark.parametrize("who", ["outsider", "anonymous"])
def test_someone_outside_the_org_gets_404(org, request_as, who):
    with pytest.raises(Http404):
        get_org_access(request_as(who), "acme")
    with pytest.raises(Http404):
        get_org_access(request_as(who), "acme", "members.manage")


def test_a_member_of_another_org_gets_404(org, other_org, request_as):
    with pytest.raises(Http404):
        get_org_access(request_as("owner"), "other")


def test_an_unknown_slug_is_the_same_404(org, request_as):
    with pytest.raises(Http404) as unknown:
        get_org_access(request_as("owner"), "no-such-org")
    with pytest.raises(Http404) as foreign:
        get_org_access(request_as("outsider"), "acme")
    assert str(unknown.value) == str(foreign.value)


@pytest.mark.parametrize(
    ("role", "capability"),
    [
        (Role.ADMIN, "org.delete"),
        (Role.FINANCE, "members.manage"),
        (Role.AUDITOR, "teams.manage"),
        (Role.DEVELOPER, "invitations.read"),
        (Role.VIEWER, "members.read"),
    ],
)
def test_a_role_too_low_gets_403(org, request_as, role, capability):
    with pytest.raises(PermissionDenied, match=f"Your role \\({role}\\)"):
        get_org_access(request_as(role), "acme", capability)


def test_the_access_can_and_require(org, request_as):
    access = get_org_access(request_as("finance"), "acme", "budgets.manage")
    assert access.can("spend.export")
    assert not access.can("keys.manage")
    access.require("budgets.read")
    with pytest.raises(PermissionDenied):
        access.require("keys.manage")


# API tokens as principals ----------------------------------------------------------------


@pytest.fixture
def token_of(org, other_org):
    def make(org_slug: str = "acme", role: str = Role.ADMIN, **fields) -> ApiToken:
        organization = org if org_slug == "acme" else other_org
        token, _plaintext = create_api_token(actor=SYSTEM, org=organization, name=f"{role} token", role=role)
        if fields:
            ApiToken.objects.filter(pk=token.pk).update(**fields)
            token.refresh_from_db()
        return token

    return make


def test_a_token_acts_with_its_role(org, request_as, token_of):
    token = token_of(role=Role.AUDITOR)
    access = get_org_access(request_as("anonymous", token), "acme", "audit.export")
    assert (access.org, access.role) == (org, Role.AUDITOR)
    assert (access.actor.kind, access.actor.id, access.actor.user_id) == ("token", str(token.pk), None)
    with pytest.raises(PermissionDenied):
        get_org_access(request_as("anonymous", token), "acme", "members.manage")


def test_a_token_of_another_org_gets_404(org, request_as, token_of):
    token = token_of("other", Role.OWNER)
    with pytest.raises(Http404):
        get_org_access(request_as("anonymous", token), "acme")


def test_a_revoked_token_gets_404(org, request_as, token_of):
    token = token_of()
    revoke_api_token(actor=SYSTEM, token=token)
    token.refresh_from_db()
    with pytest.raises(Http404):
        get_org_access(request_as("anonymous", token), "acme")


def test_an_expired_token_gets_404(org, request_as, token_of):
    token = token_of(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Http404):
        get_org_access(request_as("anonymous", token), "acme")


def test_a_token_does_not_borrow_the_signed_in_users_membership(org, request_as, token_of, users):
    """A request with a token acts as the token only, even if a session user is also present."""
    token = token_of("other", Role.OWNER)
    request = request_as("owner")
    request.auth = token
    with pytest.raises(Http404):
        get_org_access(request, "acme")


# Teams and team admins -------------------------------------------------------------------


@pytest.fixture
def second_team(org):
    return create_team(actor=SYSTEM, org=org, name="Research")


def test_team_access_reads_any_team_of_the_org(org, request_as, team, second_team):
    access, found = get_team_access(request_as("viewer"), "acme", second_team.pk)
    assert (access.role, found) == (Role.VIEWER, second_team)


def test_team_access_of_another_orgs_team_is_404(org, other_org, request_as):
    foreign_team = Team.objects.get(org=other_org)
    with pytest.raises(Http404):
        get_team_access(request_as("owner"), "acme", foreign_team.pk, "teams.manage")
    with pytest.raises(Http404):
        get_team_access(request_as("outsider"), "acme", foreign_team.pk)


def test_a_team_admin_manages_their_own_team_only(org, request_as, team, second_team, users):
    set_team_admin(actor=SYSTEM, team=team, user=users["developer"], team_admin=True)
    access, found = get_team_access(request_as("developer"), "acme", team.pk, "teams.manage")
    assert (access.role, found) == (Role.DEVELOPER, team)
    get_team_access(request_as("developer"), "acme", team.pk, "keys.manage")
    with pytest.raises(PermissionDenied):
        get_team_access(request_as("developer"), "acme", second_team.pk, "teams.manage")
    # Team admin is team-scoped: no org-level capability comes with it.
    with pytest.raises(PermissionDenied):
        get_team_access(request_as("developer"), "acme", team.pk, "members.manage")
    with pytest.raises(PermissionDenied):
        get_org_access(request_as("developer"), "acme", "teams.manage")


def test_a_plain_team_member_does_not_manage_the_team(org, request_as, team):
    with pytest.raises(PermissionDenied):
        get_team_access(request_as("developer"), "acme", team.pk, "teams.manage")


def test_org_admins_manage_every_team(org, request_as, team, second_team):
    for each in (team, second_team):
        _access, found = get_team_access(request_as("admin"), "acme", each.pk, "teams.manage")
        assert found == each


def test_a_team_admin_permission_is_lost_with_the_team_membership(org, request_as, team, users):
    from orgs.services import remove_team_member

    set_team_admin(actor=SYSTEM, team=team, user=users["viewer"], team_admin=True)
    remove_team_member(actor=SYSTEM, team=team, user=users["viewer"])
    with pytest.raises(PermissionDenied):
        get_team_access(request_as("viewer"), "acme", team.pk, "teams.manage")


def test_a_token_is_never_a_team_admin(org, request_as, token_of, team):
    token = token_of(role=Role.DEVELOPER)
    assert not is_team_admin(TokenUser(token), team)
    with pytest.raises(PermissionDenied):
        get_team_access(request_as("anonymous", token), "acme", team.pk, "teams.manage")


def test_a_team_admin_who_left_the_org_has_no_access(org, request_as, team, users):
    from orgs.models import Membership
    from orgs.services import remove_member

    add_team_member(actor=SYSTEM, team=team, user=users["auditor"], team_admin=True)
    remove_member(actor=SYSTEM, membership=Membership.objects.get(org=org, user=users["auditor"]))
    with pytest.raises(Http404):
        get_team_access(request_as("auditor"), "acme", team.pk, "teams.manage")


def test_a_superuser_with_a_viewer_role_is_not_a_team_admin(org, request_as, team, users):
    viewer = users["viewer"]
    viewer.is_superuser = True
    viewer.save(update_fields=["is_superuser"])
    with pytest.raises(PermissionDenied):
        get_team_access(request_as("viewer"), "acme", team.pk, "teams.manage")
    assert not is_team_admin(User.objects.get(pk=viewer.pk), team)

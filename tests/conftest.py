"""Named users per role (owner, admin, finance, auditor, developer, viewer, outsider) in one org
"acme", plus a second org "other" whose ids an outsider test can aim at."""

import pytest
import redis
from django.conf import settings
from django.db.backends.postgresql.operations import DatabaseOperations
from django.test import Client

from audit.context import Actor
from orgs.models import Organization, User
from orgs.roles import CAPABILITIES, Role
from orgs.services import add_team_member, change_role, create_org, create_team

# Fixture modules shared across test folders.
pytest_plugins = [
    "tests.plugins.key_ring",
    "tests.plugins.redis_state",
    "tests.plugins.provider_simulator",
    "tests.plugins.gateway_workers",
    "tests.plugins.served_org",
    "tests.plugins.provider_matrix",
    "tests.plugins.fleet_state",
    "tests.plugins.ingestion_process",
    "tests.plugins.followers",
    "tests.plugins.celery_worker",
    "tests.plugins.redis_topology",
    "tests.plugins.haproxy",
    "tests.plugins.drill_report",
]

PASSWORD = "correct-horse-battery-staple"
ROLES = [role.value for role in Role]


def make_user(email: str) -> User:
    return User.objects.create_user(email=email, password=PASSWORD, full_name=email.split("@")[0].title())


def actor_for(user: User, role: str) -> Actor:
    return Actor(
        kind="user", id=str(user.uuid), label=user.email, role=role, user_id=user.pk, capabilities=CAPABILITIES[role]
    )


SYSTEM = Actor.system("tests")
AUDIT_TABLE = "audit_auditevent"
AUDIT_TRUNCATE_TRIGGER = "audit_event_no_truncate"


@pytest.fixture(scope="session", autouse=True)
def _flush_past_the_audit_truncate_trigger():
    """Let pytest-django empty the database after `transactional_db` and `live_server` tests.

    The append-only trigger refuses TRUNCATE, which is how Django's test flush empties tables, so
    the flush does what a superuser would: disable that one trigger inside the flush's own
    transaction and re-enable it before it commits. Nothing else sees the trigger disabled.
    """
    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        statements = original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        if AUDIT_TABLE not in tables or not statements:
            return statements
        return [
            f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER {AUDIT_TRUNCATE_TRIGGER};",
            *statements,
            f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER {AUDIT_TRUNCATE_TRIGGER};",
        ]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", sql_flush)
        yield


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    """A client of the real Redis the suite runs against (REDIS_URL)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _empty_test_cache(redis_client):
    """Start every test with an empty cache (rate-limit counters, used TOTP codes, ...).

    Only this suite's keys go: `cache.clear()` would FLUSHDB, which also empties the Celery
    queues and anything a `make run` sharing the server keeps there.
    """
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


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

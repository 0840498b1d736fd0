"""manage.py create_api_token, bootstrap_demo and verify_audit."""

import re
import stat
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from audit.models import AuditEvent
from orgs.management.commands.bootstrap_demo import DEMO_OWNER_EMAIL
from orgs.models import ApiToken, Organization, User
from orgs.roles import Role
from orgs.tokens import API_TOKEN_PREFIX, digest

AUDIT_API = "/api/v1/orgs/{slug}/audit-events/"
TEAMS_API = "/api/v1/orgs/{slug}/teams/"


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def api_get(url: str, token: str):
    return Client().get(url, HTTP_AUTHORIZATION=f"Bearer {token}")


# create_api_token ------------------------------------------------------------------------


def test_create_api_token_prints_a_token_once_that_authenticates(org):
    output = run("create_api_token", "--org", "acme", "--role", "auditor", "--name", "siem")
    plaintext = output.strip()
    assert output.count("\n") == 1
    assert re.fullmatch(rf"{API_TOKEN_PREFIX}[A-Za-z0-9_-]{{40,}}", plaintext)
    token = ApiToken.objects.get(org=org)
    assert (token.name, token.role, token.digest, token.expires_at) == ("siem", Role.AUDITOR, digest(plaintext), None)
    assert api_get(AUDIT_API.format(slug="acme"), plaintext).status_code == 200
    # The role holds: an auditor token cannot create a team.
    response = Client().post(TEAMS_API.format(slug="acme"), {"name": "x"}, HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert response.status_code == 403
    event = AuditEvent.objects.get(org=org, action="api_token.created")
    assert (event.actor_type, event.actor_label) == ("system", "manage.py create_api_token")


def test_create_api_token_with_an_expiry(org):
    plaintext = run("create_api_token", "--org", "acme", "--role", "viewer", "--expires-in-days", "7").strip()
    token = ApiToken.objects.get(digest=digest(plaintext))
    assert token.expires_at is not None
    assert token.status == "active"


def test_create_api_token_for_an_unknown_org_fails(db):
    with pytest.raises(CommandError, match="No org with slug 'nope'"):
        run("create_api_token", "--org", "nope", "--role", "admin")
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize("days", ["0", "-3"])
def test_create_api_token_refuses_a_non_positive_expiry(org, days):
    with pytest.raises(CommandError, match="must be positive"):
        run("create_api_token", "--org", "acme", "--role", "admin", "--expires-in-days", days)
    assert not ApiToken.objects.exists()


def test_create_api_token_refuses_an_unknown_role(org):
    with pytest.raises(CommandError, match="invalid choice"):
        run("create_api_token", "--org", "acme", "--role", "root")


# bootstrap_demo --------------------------------------------------------------------------


def test_bootstrap_demo_creates_a_usable_demo_org(db, tmp_path):
    env_file = tmp_path / "var" / "demo.env"
    output = run("bootstrap_demo", "--env-file", str(env_file))

    org = Organization.objects.get(slug="demo")
    assert org.require_mfa is False
    owner = User.objects.get(email=DEMO_OWNER_EMAIL)
    assert list(org.memberships.values_list("user__email", "role")) == [(DEMO_OWNER_EMAIL, Role.OWNER)]

    password = re.search(r"password:\s+(\S+)", output).group(1)
    assert owner.check_password(password)
    client = Client()
    response = client.post("/accounts/login/", {"login": DEMO_OWNER_EMAIL, "password": password})
    assert response.status_code == 302
    assert client.get("/orgs/demo/").status_code == 200  # no MFA detour in the demo org

    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = env_values(env_file)
    assert {"GATEHOUSE_ADMIN_TOKEN", "GATEHOUSE_DEMO_KEY"} <= set(values)
    token = values["GATEHOUSE_ADMIN_TOKEN"]
    # Secrets go to the file only, never to the terminal.
    assert token not in output
    assert values["GATEHOUSE_DEMO_KEY"] not in output
    assert ApiToken.objects.get(digest=digest(token)).role == Role.ADMIN
    assert api_get(AUDIT_API.format(slug="demo"), token).status_code == 200
    assert api_get(TEAMS_API.format(slug="demo"), token).status_code == 200
    actions = set(AuditEvent.objects.filter(org=org).values_list("action", flat=True))
    assert {"org.created", "api_token.created", "auth.login"} <= actions


def env_values(path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert all(re.fullmatch(r"[A-Z_]+=\S+", line) for line in lines), lines
    return dict(line.split("=", 1) for line in lines)


def test_bootstrap_demo_a_second_time_creates_nothing(db, tmp_path):
    env_file = tmp_path / "demo.env"
    run("bootstrap_demo", "--env-file", str(env_file))
    first_content = env_file.read_text()
    owner_password = User.objects.get(email=DEMO_OWNER_EMAIL).password
    counts = (Organization.objects.count(), User.objects.count(), ApiToken.objects.count(), AuditEvent.objects.count())

    output = run("bootstrap_demo", "--env-file", str(env_file))
    assert "Demo org exists" in output
    assert "password:" not in output
    assert (
        Organization.objects.count(),
        User.objects.count(),
        ApiToken.objects.count(),
        AuditEvent.objects.count(),
    ) == counts
    assert User.objects.get(email=DEMO_OWNER_EMAIL).password == owner_password
    assert env_file.read_text() == first_content


def test_bootstrap_demo_tightens_an_existing_env_file(db, tmp_path):
    env_file = tmp_path / "demo.env"
    env_file.write_text("OLD=1\n")
    env_file.chmod(0o644)
    run("bootstrap_demo", "--env-file", str(env_file))
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text().startswith("GATEHOUSE_ADMIN_TOKEN=ghm_")


def test_bootstrap_demo_reuses_an_existing_owner_account(db, tmp_path):
    existing = User.objects.create_user(email=DEMO_OWNER_EMAIL, password="an-old-password-123")
    output = run("bootstrap_demo", "--env-file", str(tmp_path / "demo.env"))
    password = re.search(r"password:\s+(\S+)", output).group(1)
    existing.refresh_from_db()
    assert existing.check_password(password)
    assert Organization.objects.get(slug="demo").memberships.get().user == existing


# verify_audit ----------------------------------------------------------------------------


def test_verify_audit_ok(org):
    count = AuditEvent.objects.filter(org=org).count()
    first, coverage = run("verify_audit", "--org", "acme").splitlines()
    assert first == f"OK: {count} events verified for acme."
    # Nothing is signed yet: verification says so rather than implying the events are protected.
    assert coverage.startswith(f"{count} event") and "not covered by a signature yet" in coverage


def test_verify_audit_broken_exits_non_zero_naming_the_sequence(org, capsys):
    from orgs.services import create_team
    from tests.conftest import SYSTEM

    create_team(actor=SYSTEM, org=org, name="One")
    create_team(actor=SYSTEM, org=org, name="Two")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_or_delete")
        cursor.execute(
            "UPDATE audit_auditevent SET target_label = 'Renamed' WHERE org_id = %s AND sequence = 2", [org.pk]
        )

    with pytest.raises(CommandError) as error:
        run("verify_audit", "--org", "acme")
    assert str(error.value) == ("BROKEN at sequence 2: content does not match its hash (1 events verified before it).")
    # As a command line: exit status 1 and the message on stderr.
    from django.core.management import ManagementUtility

    with pytest.raises(SystemExit) as exited:
        ManagementUtility(["manage.py", "verify_audit", "--org", "acme"]).execute()
    assert exited.value.code == 1
    assert "BROKEN at sequence 2" in capsys.readouterr().err


def test_verify_audit_of_an_unknown_org(db):
    with pytest.raises(CommandError, match="No org with slug 'nope'"):
        run("verify_audit", "--org", "nope")

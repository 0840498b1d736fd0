"""Signing in through allauth (audit events, rate limits, MFA) and API bearer tokens."""

import time
from datetime import timedelta

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value
from django.conf import settings
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from orgs.models import ApiToken, Membership
from orgs.roles import Role
from orgs.services import create_api_token, revoke_api_token, update_org_settings
from tests.conftest import PASSWORD, SYSTEM, make_user

LOGIN_URL = "/accounts/login/"
CANARY_PASSWORD = "canary-pw-3c1e9a7b5d"
TOO_MANY = "Too many failed login attempts"


def sign_in(client: Client, email: str, password: str, **extra):
    return client.post(LOGIN_URL, {"login": email, "password": password}, **extra)


def is_signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def all_audit_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(string_agg(row_to_json(e)::text, ''), '') FROM audit_auditevent e")
        return cursor.fetchone()[0]


# Sign-in and its audit events ------------------------------------------------------------


def test_sign_in_records_auth_login_in_each_of_the_users_orgs(org, other_org, users):
    owner = users["owner"]
    Membership.objects.create(org=other_org, user=owner, role=Role.VIEWER)
    client = Client(HTTP_USER_AGENT="pytest-browser/1.0")
    response = sign_in(client, "owner@acme.test", PASSWORD)
    assert response.status_code == 302
    assert is_signed_in(client)
    events = AuditEvent.objects.filter(action="auth.login").order_by("org__name")
    assert [e.org for e in events] == [org, other_org]
    for event in events:
        assert (event.actor_type, event.actor_id, event.target_label) == ("user", str(owner.uuid), "owner@acme.test")
        assert (event.ip, event.user_agent) == ("127.0.0.1", "pytest-browser/1.0")
        assert event.request_id
    assert not AuditEvent.objects.filter(action="auth.login", org=None).exists()


def test_sign_in_with_another_case_of_the_email_works(org, users):
    assert sign_in(Client(), "Owner@ACME.test", PASSWORD).status_code == 302
    assert AuditEvent.objects.filter(action="auth.login", org=org, actor_id=str(users["owner"].uuid)).count() == 1


def test_sign_in_of_someone_in_no_org_goes_to_the_platform_chain(org, users):
    client = Client()
    assert sign_in(client, "outsider@elsewhere.test", PASSWORD).status_code == 302
    event = AuditEvent.objects.get(action="auth.login")
    assert (event.org_id, event.target_label) == (None, "outsider@elsewhere.test")


def test_sign_out_is_recorded(org, users):
    client = Client()
    sign_in(client, "viewer@acme.test", PASSWORD)
    assert client.post("/accounts/logout/").status_code == 302
    assert not is_signed_in(client)
    assert AuditEvent.objects.filter(org=org, action="auth.logout", actor_id=str(users["viewer"].uuid)).count() == 1


def test_a_failed_sign_in_is_recorded_without_the_password(org, other_org, users):
    Membership.objects.create(org=other_org, user=users["admin"], role=Role.AUDITOR)
    client = Client()
    response = sign_in(client, "admin@acme.test", CANARY_PASSWORD)
    assert response.status_code == 200
    assert not is_signed_in(client)
    failed = AuditEvent.objects.filter(action="auth.login_failed").order_by("org__name")
    assert [e.org for e in failed] == [org, other_org]
    assert {e.target_label for e in failed} == {"admin@acme.test"}
    assert not AuditEvent.objects.filter(action="auth.login").exists()
    assert CANARY_PASSWORD not in all_audit_text()


def test_a_failed_sign_in_of_an_unknown_email_goes_to_the_platform_chain(org):
    sign_in(Client(), "nobody@nowhere.test", CANARY_PASSWORD)
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert (event.org_id, event.target_label, event.actor_id) == (None, "nobody@nowhere.test", "")
    assert CANARY_PASSWORD not in all_audit_text()


# Rate limits (real Redis cache) ----------------------------------------------------------


def test_the_rate_limit_settings_are_what_the_tests_assume():
    assert settings.ACCOUNT_RATE_LIMITS["login_failed"] == "10/m/ip,5/5m/key"
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"


def test_after_five_failures_for_one_account_even_the_right_password_is_refused(org, redis_client):
    client = Client()
    for attempt in range(5):
        response = sign_in(client, "admin@acme.test", f"wrong-{attempt}")
        assert response.status_code == 200
        assert TOO_MANY not in response.content.decode(), attempt
    # The counters live in the real Redis, under the test key prefix.
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    assert list(redis_client.scan_iter(match=f"{prefix}:*login_failed*"))

    response = sign_in(client, "admin@acme.test", PASSWORD)
    assert response.status_code == 200
    assert TOO_MANY in response.content.decode()
    assert not is_signed_in(client)
    assert not AuditEvent.objects.filter(action="auth.login").exists()
    # Another account from the same address is not locked out by it.
    assert sign_in(Client(), "viewer@acme.test", PASSWORD).status_code == 302


def test_the_account_limit_holds_from_another_address(org):
    for attempt in range(5):
        sign_in(Client(), "admin@acme.test", f"wrong-{attempt}", REMOTE_ADDR=f"10.0.0.{attempt + 1}")
    response = sign_in(Client(), "admin@acme.test", PASSWORD, REMOTE_ADDR="10.0.1.1")
    assert TOO_MANY in response.content.decode()


def test_ten_failures_from_one_address_lock_that_address_out(org):
    for attempt in range(10):
        sign_in(Client(), f"nobody{attempt}@nowhere.test", "wrong-password")
    locked = sign_in(Client(), "viewer@acme.test", PASSWORD)
    assert TOO_MANY in locked.content.decode()
    assert sign_in(Client(), "viewer@acme.test", PASSWORD, REMOTE_ADDR="10.9.9.9").status_code == 302


def test_successful_sign_ins_do_not_count_towards_the_limit(org):
    for _ in range(6):
        client = Client()
        assert sign_in(client, "viewer@acme.test", PASSWORD).status_code == 302


# MFA required of owners and admins -------------------------------------------------------

MFA_ACTIVATE = "/accounts/2fa/totp/activate/"


@pytest.fixture
def mfa_org(org):
    """acme, now requiring MFA of its owners and admins."""
    update_org_settings(actor=SYSTEM, org=org, name=org.name, require_mfa=True)
    return org


def with_totp(user) -> str:
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return secret


def totp_code(secret: str) -> str:
    """The current code, taken far enough from the end of its 30-second window to still be valid
    when the request checks it (allauth accepts no neighbouring window by default)."""
    if time.time() % 30 > 27:
        time.sleep(30 - time.time() % 30 + 0.1)
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
@pytest.mark.parametrize("path", ["/", "/orgs/acme/", "/orgs/acme/teams/", "/orgs/acme/audit/"])
def test_owners_and_admins_without_totp_are_sent_to_set_it_up(mfa_org, client_for, role, path):
    response = client_for(role).get(path)
    assert response.status_code == 302
    assert response["Location"] == f"{MFA_ACTIVATE}?next={path}"


def test_signing_in_leads_an_owner_without_totp_to_the_set_up_page(mfa_org):
    """allauth asks for the password again before MFA changes, even right after signing in."""
    client = Client()
    response = sign_in(client, "owner@acme.test", PASSWORD, follow=True)
    assert [url for url, _status in response.redirect_chain] == [
        "/",
        f"{MFA_ACTIVATE}?next=/",
        "/accounts/reauthenticate/?next=%2Faccounts%2F2fa%2Ftotp%2Factivate%2F%3Fnext%3D%252F",
    ]
    response = client.post(response.redirect_chain[-1][0], {"password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0].startswith(MFA_ACTIVATE)
    assert response.status_code == 200
    assert "mfa.totp.secret" in client.session


@pytest.mark.parametrize("role", [Role.FINANCE, Role.AUDITOR, Role.DEVELOPER, Role.VIEWER])
def test_other_roles_are_not_sent_to_mfa_set_up(mfa_org, client_for, role):
    assert client_for(role).get("/orgs/acme/").status_code == 200


def test_an_owner_with_totp_is_not_redirected(mfa_org, client_for, users):
    with_totp(users["owner"])
    assert client_for("owner").get("/orgs/acme/").status_code == 200


def test_recovery_codes_alone_are_not_enough(mfa_org, client_for, users):
    RecoveryCodes.activate(users["owner"])
    assert Authenticator.objects.filter(user=users["owner"]).exists()
    assert client_for("owner").get("/orgs/acme/").status_code == 302


def test_an_org_without_the_requirement_does_not_redirect(org, client_for):
    assert org.require_mfa is False
    assert client_for("owner").get("/orgs/acme/").status_code == 200


def test_one_org_requiring_mfa_applies_on_every_page(org, other_org, users):
    """An owner of an MFA org who is also in a relaxed org must set up MFA before using either."""
    update_org_settings(actor=SYSTEM, org=other_org, name="Other", require_mfa=True)
    Membership.objects.create(org=other_org, user=users["viewer"], role=Role.ADMIN)
    client = Client()
    client.force_login(users["viewer"])
    assert client.get("/orgs/acme/").status_code == 302


def test_an_invitation_link_is_reachable_without_mfa(mfa_org, client_for):
    response = client_for("owner").get("/invitations/not-a-real-token/")
    assert response.status_code == 404
    assert not response.has_header("Location")


def test_signing_in_with_totp_asks_for_the_code_before_anything_is_recorded(mfa_org, users):
    secret = with_totp(users["owner"])
    client = Client()
    response = sign_in(client, "owner@acme.test", PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_authenticate")
    assert not is_signed_in(client)
    assert not AuditEvent.objects.filter(action="auth.login").exists()

    wrong = client.post(reverse("mfa_authenticate"), {"code": "000000" if totp_code(secret) != "000000" else "111111"})
    assert wrong.status_code == 200
    assert not is_signed_in(client)

    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert response.status_code == 302
    assert is_signed_in(client)
    assert AuditEvent.objects.filter(org=mfa_org, action="auth.login").count() == 1
    assert client.get("/orgs/acme/").status_code == 200


def test_adding_totp_through_the_set_up_page_is_recorded(mfa_org, users, django_capture_on_commit_callbacks):
    client = Client()
    sign_in(client, "owner@acme.test", PASSWORD)
    client.post(f"/accounts/reauthenticate/?next={MFA_ACTIVATE}", {"password": PASSWORD})
    page = client.get(MFA_ACTIVATE)
    secret = client.session["mfa.totp.secret"]
    assert secret in page.content.decode()  # shown once, to be typed into an authenticator app
    # allauth sends authenticator_added once the authenticator is committed.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(MFA_ACTIVATE, {"code": totp_code(secret)})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=users["owner"], type=Authenticator.Type.TOTP).exists()
    added = AuditEvent.objects.filter(org=mfa_org, action="auth.mfa_added")
    # First TOTP also generates recovery codes; each authenticator is its own event.
    assert sorted(event.diff["type"]["after"] for event in added) == ["recovery_codes", "totp"]
    assert secret not in all_audit_text()
    assert client.get("/orgs/acme/").status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/orgs/acme/teams/", "/api/v1/orgs/acme/audit-events/"])
def test_the_api_refuses_a_session_that_still_needs_mfa(mfa_org, client_for, users, path):
    response = client_for("owner").get(path)
    assert response.status_code == 403
    assert response.json() == {"detail": "Set up two-factor authentication before using the API."}
    with_totp(users["owner"])
    assert client_for("owner").get(path).status_code == 200


def test_the_api_does_not_ask_a_token_for_mfa(mfa_org):
    _token, plaintext = create_api_token(actor=SYSTEM, org=mfa_org, name="ci", role=Role.OWNER)
    response = Client().get("/api/v1/orgs/acme/teams/", HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert response.status_code == 200


# API bearer tokens -----------------------------------------------------------------------

API_URL = "/api/v1/orgs/acme/audit-events/"


@pytest.fixture
def auditor_token(org) -> tuple[ApiToken, str]:
    return create_api_token(actor=SYSTEM, org=org, name="siem", role=Role.AUDITOR)


def bearer(value: str) -> dict:
    return {"HTTP_AUTHORIZATION": value}


def test_a_valid_token_reads_its_org_and_marks_its_use(auditor_token):
    token, plaintext = auditor_token
    assert token.last_used_at is None
    response = Client().get(API_URL, **bearer(f"Bearer {plaintext}"))
    assert response.status_code == 200
    assert response.json()["results"][0]["action"] == "api_token.created"
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_the_bearer_keyword_is_case_insensitive(auditor_token):
    _token, plaintext = auditor_token
    assert Client().get(API_URL, **bearer(f"bearer {plaintext}")).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer " + "x" * 201,
        "Token ghm_abc",
        "Basic dXNlcjpwYXNz",
        "ghm_no_scheme",
    ],
)
def test_a_malformed_authorization_header_is_401(auditor_token, header):
    response = Client().get(API_URL, **bearer(header))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert "detail" in response.json()


def test_an_unknown_token_is_401(auditor_token):
    _token, plaintext = auditor_token
    response = Client().get(API_URL, **bearer(f"Bearer {plaintext[:-1]}x"))
    assert response.status_code == 401


def test_a_revoked_token_is_401_at_once(auditor_token):
    token, plaintext = auditor_token
    assert Client().get(API_URL, **bearer(f"Bearer {plaintext}")).status_code == 200
    revoke_api_token(actor=SYSTEM, token=token)
    response = Client().get(API_URL, **bearer(f"Bearer {plaintext}"))
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid, expired or revoked token."}


def test_an_expired_token_is_401(auditor_token):
    token, plaintext = auditor_token
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Client().get(API_URL, **bearer(f"Bearer {plaintext}")).status_code == 401


def test_a_bad_token_is_401_even_beside_a_valid_session(auditor_token, client_for):
    """A bad token is never quietly replaced by the session: the caller meant the token."""
    response = client_for("auditor").get(API_URL, **bearer("Bearer ghm_not-a-token"))
    assert response.status_code == 401


def test_no_credentials_at_all_is_401_or_403(org):
    response = Client().get(API_URL)
    assert response.status_code in {401, 403}
    assert response.status_code == 401, "Bearer authentication is first, so DRF answers 401 with a challenge"


def test_a_token_of_another_org_is_404(org, other_org):
    _token, plaintext = create_api_token(actor=SYSTEM, org=other_org, name="other", role=Role.OWNER)
    assert Client().get(API_URL, **bearer(f"Bearer {plaintext}")).status_code == 404


def test_a_token_with_a_role_too_low_is_403(org):
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name="viewer", role=Role.VIEWER)
    assert Client().get(API_URL, **bearer(f"Bearer {plaintext}")).status_code == 403


def test_a_token_is_not_a_way_into_the_pages(auditor_token):
    _token, plaintext = auditor_token
    response = Client().get("/orgs/acme/audit/", **bearer(f"Bearer {plaintext}"))
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN_URL)


def test_an_outsider_session_on_the_api_is_404(org, users):
    client = Client()
    client.force_login(make_user("stranger@elsewhere.test"))
    assert client.get(API_URL).status_code == 404

"""Caller keys and provider credentials over the API:
/api/v1/orgs/<org_slug>/keys/ and /api/v1/orgs/<org_slug>/credentials/."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from keys.models import CallerKey, ProviderCredential
from keys.services import create_credential, digest, issue_key, open_secret, revoke_key
from orgs.models import Team
from orgs.services import add_team_member, create_api_token, create_team, set_team_admin
from sla.services import create_deployment
from tests.conftest import SYSTEM
from tests.factories import make_routes

CANARY = "sk-canary-api-4d1f8b2c6e9a7035"


def url(name: str, *args) -> str:
    return reverse(f"api:keys:{name}", args=args)


def post(client: Client, path: str, data=None):
    return client.post(path, data if data is not None else {}, content_type="application/json")


def patch(client: Client, path: str, data):
    return client.patch(path, data, content_type="application/json")


def last_event(org) -> AuditEvent:
    return AuditEvent.objects.filter(org=org).order_by("-sequence").first()


def assert_event(org, action: str, actor_id: str) -> AuditEvent:
    event = last_event(org)
    assert (event.action, event.actor_id) == (action, actor_id)
    return event


def token_client(org, role: str) -> Client:
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name=f"{role} automation", role=role)
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")


def assert_field_errors(response, field: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field], body
    assert body[field] and all(isinstance(message, str) for message in body[field])


@pytest.fixture
def routes(org, actors, fresh_key_ring):
    return make_routes(org, actors["admin"])


@pytest.fixture
def limited_team(team, routes):
    Team.objects.filter(pk=team.pk).update(allowed_models=["gpt-4o", "claude-sonnet"], rpm_limit=100, tpm_limit=50_000)
    team.refresh_from_db()
    return team


@pytest.fixture
def data_team(org):
    """A second team of acme; nobody in it."""
    return create_team(actor=SYSTEM, org=org, name="Data")


@pytest.fixture
def viewer_team_admin(team, users):
    """The viewer, made team admin of `team`: team-level rights without any org-level key right."""
    set_team_admin(actor=SYSTEM, team=team, user=users["viewer"], team_admin=True)
    return users["viewer"]


@pytest.fixture
def other_team(other_org):
    return other_org.teams.get()


def key_body(team, **fields) -> dict:
    return {"team": str(team.pk), "name": "laptop", **fields}


# Issuing keys ------------------------------------------------------------------------------


def test_issued_key_plaintext_is_shown_once(client_for, org, limited_team, users):
    client = client_for("admin")
    expires_at = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    response = post(
        client,
        url("key-list", "acme"),
        key_body(
            limited_team,
            name=" CI runner ",
            user=str(users["developer"].uuid),
            allowed_models=["gpt-4o"],
            rpm_limit=60,
            tags=["ci", "prod", "ci"],
            expires_at=expires_at.isoformat(),
        ),
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    plaintext = body["key"]
    key = CallerKey.objects.get(pk=body["id"], org=org)
    assert plaintext.startswith("gh_")
    assert key.digest == digest(plaintext)
    assert body == {
        "id": str(key.pk),
        "name": "CI runner",
        "prefix": plaintext[:11],
        "team": {"id": str(limited_team.pk), "name": "Platform"},
        "user": {"id": str(users["developer"].uuid), "email": "developer@acme.test"},
        "status": "active",
        "allowed_models": ["gpt-4o"],
        "rpm_limit": 60,
        "tpm_limit": 50_000,
        "tags": ["ci", "prod"],
        "created_at": body["created_at"],
        "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        "revoked_at": None,
        "last_used_at": None,
        "rotated_from": None,
        "key": plaintext,
    }
    event = assert_event(org, "key.issued", str(users["admin"].uuid))
    assert event.target_id == str(key.pk)
    assert plaintext not in str(event.diff)

    for response in (client.get(url("key-list", "acme")), client.get(url("key-detail", "acme", key.pk))):
        assert response.status_code == 200
        assert plaintext not in response.content.decode()
    assert "key" not in client.get(url("key-detail", "acme", key.pk)).json()
    assert "key" not in client.get(url("key-list", "acme")).json()["results"][0]


def test_a_service_key_has_no_holder(client_for, org, team):
    response = post(client_for("owner"), url("key-list", "acme"), key_body(team, user=None))
    assert response.status_code == 201
    assert response.json()["user"] is None
    assert CallerKey.objects.get(pk=response.json()["id"]).user is None


def test_developer_issues_keys_only_for_themselves_in_their_teams(client_for, org, team, data_team, users):
    client = client_for("developer")
    own = post(client, url("key-list", "acme"), key_body(team, user=str(users["developer"].uuid)))
    assert own.status_code == 201
    assert own.json()["user"]["email"] == "developer@acme.test"
    assert_event(org, "key.issued", str(users["developer"].uuid))

    refused = [
        key_body(team, user=str(users["viewer"].uuid)),  # a teammate
        key_body(team),  # nobody's
        key_body(team, user=None),
        key_body(data_team, user=str(users["developer"].uuid)),  # a team they are not in
    ]
    for data in refused:
        response = post(client, url("key-list", "acme"), data)
        assert response.status_code == 403, data
        assert response.json() == {"detail": "You may issue keys only for yourself, in teams you belong to."}
    assert CallerKey.objects.count() == 1


def test_team_admin_issues_keys_for_team_members_or_nobody(client_for, org, team, data_team, users, viewer_team_admin):
    client = client_for("viewer")
    for_member = post(client, url("key-list", "acme"), key_body(team, user=str(users["developer"].uuid)))
    assert for_member.status_code == 201
    assert post(client, url("key-list", "acme"), key_body(team)).status_code == 201
    assert_event(org, "key.issued", str(users["viewer"].uuid))

    not_in_team = post(client, url("key-list", "acme"), key_body(team, user=str(users["finance"].uuid)))
    assert not_in_team.json() == {"user": ["This person is not a member of the team."]}
    assert post(client, url("key-list", "acme"), key_body(data_team)).status_code == 403
    admin = post(client_for("admin"), url("key-list", "acme"), key_body(team, user=str(users["auditor"].uuid)))
    assert admin.json() == {"user": ["This person is not a member of the team."]}
    assert CallerKey.objects.count() == 2


@pytest.mark.parametrize("role", ["viewer", "finance", "auditor"])
def test_roles_without_key_rights_cannot_issue(client_for, org, team, users, role):
    if role != "viewer":
        add_team_member(actor=SYSTEM, team=team, user=users[role])
    data = key_body(team, user=str(users[role].uuid))
    response = post(client_for(role), url("key-list", "acme"), data)
    assert response.status_code == 403
    assert response.json() == {"detail": f"Your role ({role}) may not do this."}
    assert post(token_client(org, role), url("key-list", "acme"), data).status_code == 403
    # Refused before the body is read: an empty body is a 403 too, not a 400.
    assert post(client_for(role), url("key-list", "acme"), {}).status_code == 403
    assert not CallerKey.objects.exists()


def test_admin_token_issues_keys_and_developer_token_cannot(org, team, users):
    admin = post(token_client(org, "admin"), url("key-list", "acme"), key_body(team, user=str(users["viewer"].uuid)))
    assert admin.status_code == 201
    event = last_event(org)
    assert (event.action, event.actor_type) == ("key.issued", "token")
    # A token is nobody: it has no keys of its own to issue.
    developer = token_client(org, "developer")
    response = post(developer, url("key-list", "acme"), key_body(team, user=str(users["developer"].uuid)))
    assert response.status_code == 403


def test_keys_never_reach_beyond_the_team(client_for, org, limited_team, users):
    client = client_for("developer")
    own = {"user": str(users["developer"].uuid)}
    cases = [
        ({"allowed_models": ["o1"]}, "allowed_models", "The team does not allow: o1."),
        ({"allowed_models": ["gpt-5-nonexistent"]}, "allowed_models", "No route has the alias: gpt-5-nonexistent."),
        ({"rpm_limit": 101}, "rpm_limit", "The team allows at most 100."),
        ({"tpm_limit": 50_001}, "tpm_limit", "The team allows at most 50,000."),
    ]
    for extra, field, message in cases:
        response = post(client, url("key-list", "acme"), key_body(limited_team, **own, **extra))
        assert (response.status_code, response.json()) == (400, {field: [message]}), extra
    response = post(client, url("key-list", "acme"), key_body(limited_team, **own))
    assert response.status_code == 201
    # A key without limits of its own inherits the team's, so it can never exceed them.
    assert (response.json()["rpm_limit"], response.json()["tpm_limit"]) == (100, 50_000)
    assert CallerKey.objects.count() == 1


MISSING = object()

BAD_KEY_INPUT = [
    ({"team": MISSING}, "team"),
    ({"team": ""}, "team"),
    ({"name": MISSING}, "name"),
    ({"team": "not-a-uuid"}, "team"),
    ({"team": 5}, "team"),
    ({"team": None}, "team"),
    ({"name": ""}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "New\nline"}, "name"),
    ({"name": 42}, "name"),
    ({"user": "someone@acme.test"}, "user"),
    ({"user": 3}, "user"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": 1700000000}, "expires_at"),
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"allowed_models": "gpt-4o"}, "allowed_models"),
    ({"allowed_models": [1]}, "allowed_models"),
    ({"allowed_models": ["m" * 101]}, "allowed_models"),
    ({"rpm_limit": 0}, "rpm_limit"),
    ({"rpm_limit": -1}, "rpm_limit"),
    ({"rpm_limit": 10**30}, "rpm_limit"),
    ({"rpm_limit": "100"}, "rpm_limit"),
    ({"rpm_limit": 1.5}, "rpm_limit"),
    ({"tpm_limit": True}, "tpm_limit"),
    ({"tags": "prod"}, "tags"),
    ({"tags": {"env": "prod"}}, "tags"),
    ({"tags": [f"t{i}" for i in range(21)]}, "tags"),
    ({"tags": ["t" * 65]}, "tags"),
    ({"tags": ["ok", "bad\x00"]}, "tags"),
    ({"tags": ["ok", "bidi\u202e"]}, "tags"),
    ({"tags": [7]}, "tags"),
    ({"tags": ["ok", ""]}, "tags"),
]


@pytest.mark.parametrize(("extra", "field"), BAD_KEY_INPUT)
def test_issue_rejects_bad_input_with_field_errors(client_for, org, team, routes, extra, field):
    data = {name: value for name, value in {**key_body(team), **extra}.items() if value is not MISSING}
    assert_field_errors(post(client_for("admin"), url("key-list", "acme"), data), field)
    assert not CallerKey.objects.exists()


def test_item_errors_say_which_item(client_for, org, team):
    response = post(client_for("admin"), url("key-list", "acme"), key_body(team, tags=["ok", "t" * 65]))
    assert response.json() == {"tags": ["Item 2: Ensure this field has no more than 64 characters."]}


def test_another_orgs_ids_are_404(client_for, org, team, other_org, other_team, users):
    stranger = other_org.memberships.get().user
    foreign_key, _ = issue_key(actor=SYSTEM, team=other_team, name="theirs", user=stranger)
    client = client_for("owner")
    assert post(client, url("key-list", "acme"), key_body(other_team)).status_code == 404
    assert post(client, url("key-list", "acme"), key_body(team, user=str(stranger.uuid))).status_code == 404
    assert client.get(url("key-detail", "acme", foreign_key.pk)).status_code == 404
    assert patch(client, url("key-detail", "acme", foreign_key.pk), {"name": "mine"}).status_code == 404
    assert post(client, url("key-rotate", "acme", foreign_key.pk)).status_code == 404
    assert post(client, url("key-revoke", "acme", foreign_key.pk)).status_code == 404
    assert post(client, url("key-bulk-revoke", "acme"), {"team": str(other_team.pk)}).status_code == 404
    assert post(client, url("key-bulk-revoke", "acme"), {"user": str(stranger.uuid)}).status_code == 404
    assert client_for("outsider").get(url("key-list", "acme")).status_code == 404
    foreign_key.refresh_from_db()
    assert (foreign_key.name, foreign_key.status) == ("theirs", "active")
    assert CallerKey.objects.count() == 1


# Listing and reading -----------------------------------------------------------------------


@pytest.fixture
def key_set(org, team, data_team, users, actors):
    """Keys of several holders, teams and states."""
    now = timezone.now()
    make = lambda name, team, user=None, **fields: issue_key(  # noqa: E731
        actor=actors["admin"], team=team, name=name, user=user, **fields
    )[0]
    keys = {
        "developer": make("dev laptop", team, users["developer"], expires_at=now + timedelta(days=3)),
        "viewer": make("viewer notebook", team, users["viewer"], expires_at=now + timedelta(days=60)),
        "service": make("batch service", team),
        "data": make("data pipeline", data_team),
        "revoked": make("old laptop", team, users["developer"]),
    }
    revoke_key(actor=actors["admin"], key=keys["revoked"])
    expired = make("expired", data_team, expires_at=now + timedelta(days=1))
    CallerKey.objects.filter(pk=expired.pk).update(expires_at=now - timedelta(days=1))
    keys["expired"] = expired
    return keys


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return sorted(k["name"] for k in response.json()["results"])


def test_key_list_filters(client_for, org, team, data_team, users, key_set):
    client = client_for("auditor")
    path = url("key-list", "acme")
    assert len(names(client.get(path))) == 6
    assert names(client.get(path, {"q": "LAPTOP"})) == ["dev laptop", "old laptop"]
    assert names(client.get(path, {"q": key_set["service"].prefix})) == ["batch service"]
    assert names(client.get(path, {"team": str(data_team.pk)})) == ["data pipeline", "expired"]
    assert names(client.get(path, {"status": "revoked"})) == ["old laptop"]
    assert names(client.get(path, {"status": "expired"})) == ["expired"]
    assert names(client.get(path, {"status": "active"})) == [
        "batch service",
        "data pipeline",
        "dev laptop",
        "viewer notebook",
    ]
    assert names(client.get(path, {"owner": str(users["developer"].uuid)})) == ["dev laptop", "old laptop"]
    assert names(client.get(path, {"expiring_within_days": 7})) == ["dev laptop"]
    assert names(client.get(path, {"expiring_within_days": 90, "team": str(team.pk)})) == [
        "dev laptop",
        "viewer notebook",
    ]
    statuses = {k["name"]: k["status"] for k in client.get(path).json()["results"]}
    assert (statuses["old laptop"], statuses["expired"]) == ("revoked", "expired")
    for query, field in [
        ({"status": "lost"}, "status"),
        ({"team": "x"}, "team"),
        ({"owner": "x"}, "owner"),
        ({"expiring_within_days": "soon"}, "expiring_within_days"),
        ({"expiring_within_days": -1}, "expiring_within_days"),
        ({"q": "x" * 101}, "q"),
    ]:
        assert_field_errors(client.get(path, query), field)


def test_key_list_shows_each_principal_what_they_may_see(client_for, org, team, users, key_set, viewer_team_admin):
    path = url("key-list", "acme")
    assert names(client_for("developer").get(path)) == ["dev laptop", "old laptop"]
    # The viewer is team admin of Platform: its keys, not the Data team's.
    assert names(client_for("viewer").get(path)) == [
        "batch service",
        "dev laptop",
        "old laptop",
        "viewer notebook",
    ]
    assert len(names(client_for("finance").get(path))) == 6
    assert len(names(token_client(org, "auditor").get(path))) == 6
    assert names(token_client(org, "developer").get(path)) == []


def test_key_detail_access(client_for, org, users, key_set):
    developer, viewer = key_set["developer"], key_set["viewer"]
    assert client_for("developer").get(url("key-detail", "acme", developer.pk)).json()["name"] == "dev laptop"
    assert client_for("auditor").get(url("key-detail", "acme", viewer.pk)).status_code == 200
    assert client_for("finance").get(url("key-detail", "acme", viewer.pk)).status_code == 200
    response = client_for("developer").get(url("key-detail", "acme", viewer.pk))
    assert (response.status_code, response.json()) == (403, {"detail": "Your role (developer) may not see this key."})
    assert client_for("viewer").get(url("key-detail", "acme", developer.pk)).status_code == 403
    unknown = "6f1c1f4e-0000-4000-8000-000000000000"
    assert client_for("admin").get(url("key-detail", "acme", unknown)).status_code == 404


def add_keys(team, count: int, start: int) -> None:
    for i in range(start, start + count):
        issue_key(actor=SYSTEM, team=team, name=f"key {i}", user=team.members.first(), tags=[f"t{i}"])


@pytest.mark.parametrize("role", ["owner", "developer", "viewer"])
def test_key_list_query_count_is_constant(client_for, org, team, role, viewer_team_admin):
    client = client_for(role)
    path = url("key-list", "acme")
    client.get(path)  # the first request may set up the session

    def count_queries(expected_rows: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path, {"q": "key"})
        assert response.status_code == 200
        assert len(response.json()["results"]) >= expected_rows
        return len(queries)

    add_keys(team, 3, start=0)
    few = count_queries(3)
    add_keys(team, 27, start=3)
    assert count_queries(30) == few


def test_key_list_of_ten_thousand_keys_costs_what_a_list_of_three_does(client_for, org, team, users):
    client = client_for("developer")
    path = url("key-list", "acme")
    add_keys(team, 3, start=0)
    client.get(path)
    with CaptureQueriesContext(connection) as few:
        assert client.get(path).json()["count"] == 3
    CallerKey.objects.bulk_create(
        CallerKey(
            org=org,
            team=team,
            user=users["developer"],
            name=f"bulk {i}",
            prefix=f"gh_{i:08d}",
            digest=digest(f"bulk {i}"),
        )
        for i in range(10_000)
    )
    with CaptureQueriesContext(connection) as many:
        body = client.get(path).json()
    assert (body["count"], len(body["results"])) == (10_003, 50)
    assert len(many) == len(few)


# Changing, rotating and revoking -----------------------------------------------------------


def test_update_key(client_for, org, limited_team, users):
    key, _ = issue_key(
        actor=SYSTEM, team=limited_team, name="svc", user=users["developer"], tags=["a"], allowed_models=["gpt-4o"]
    )
    client = client_for("developer")
    path = url("key-detail", "acme", key.pk)
    response = patch(client, path, {"name": "Service", "tags": ["b", "a"], "rpm_limit": 50})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["name"], body["tags"], body["rpm_limit"], body["allowed_models"]) == (
        "Service",
        ["a", "b"],
        50,
        ["gpt-4o"],
    )
    event = assert_event(org, "key.updated", str(users["developer"].uuid))
    assert event.diff["name"] == {"before": "svc", "after": "Service"}
    expires_at = timezone.now() + timedelta(days=1)
    response = patch(client, path, {"expires_at": expires_at.isoformat(), "allowed_models": []})
    assert response.json()["allowed_models"] == []
    assert response.json()["expires_at"] is not None
    assert patch(client, path, {"expires_at": None}).json()["expires_at"] is None

    assert patch(client, path, {"rpm_limit": 101}).json() == {"rpm_limit": ["The team allows at most 100."]}
    assert patch(client, path, {"allowed_models": ["o1"]}).json() == {
        "allowed_models": ["The team does not allow: o1."]
    }
    assert_field_errors(patch(client, path, {"name": ""}), "name")
    assert_field_errors(patch(client, path, {"tags": ["x" * 65]}), "tags")
    key.refresh_from_db()
    assert (key.name, key.rpm_limit) == ("Service", 50)


def test_update_key_access(client_for, org, team, users, key_set, viewer_team_admin):
    viewer_key = url("key-detail", "acme", key_set["viewer"].pk)
    for role in ("developer", "auditor", "finance"):
        assert patch(client_for(role), viewer_key, {"name": "mine"}).status_code == 403, role
    assert patch(client_for("viewer"), viewer_key, {"name": "team admin"}).status_code == 200
    data_key = url("key-detail", "acme", key_set["data"].pk)
    assert patch(client_for("viewer"), data_key, {"name": "not my team"}).status_code == 403
    assert patch(client_for("admin"), data_key, {"name": "admin"}).status_code == 200
    revoked = patch(client_for("admin"), url("key-detail", "acme", key_set["revoked"].pk), {"name": "again"})
    assert revoked.json() == {"key": ["This key is revoked; it cannot be changed."]}


def test_rotate_key_shows_the_successor_once(client_for, org, team, users):
    old, old_plaintext = issue_key(actor=SYSTEM, team=team, name="svc", user=users["developer"], tags=["prod"])
    client = client_for("developer")
    before = timezone.now()
    response = post(client, url("key-rotate", "acme", old.pk))
    assert response.status_code == 201, response.json()
    body = response.json()
    successor = CallerKey.objects.get(pk=body["id"])
    assert successor.digest == digest(body["key"])
    assert body["key"] != old_plaintext
    assert (body["rotated_from"], body["name"], body["tags"], body["user"]["email"]) == (
        str(old.pk),
        "svc",
        ["prod"],
        "developer@acme.test",
    )
    old.refresh_from_db()
    assert before + timedelta(hours=24) <= old.expires_at <= timezone.now() + timedelta(hours=24)
    assert old.status == "active"
    assert_event(org, "key.rotated", str(users["developer"].uuid))
    listed = client.get(url("key-list", "acme"))
    assert body["key"] not in listed.content.decode()

    again = post(client, url("key-rotate", "acme", old.pk))
    assert again.json() == {"key": ["This key was already rotated."]}


def test_rotate_with_no_grace_ends_the_old_key_now(client_for, org, team, users):
    old, _ = issue_key(actor=SYSTEM, team=team, name="leaked", user=users["developer"])
    response = post(client_for("admin"), url("key-rotate", "acme", old.pk), {"grace_hours": 0})
    assert response.status_code == 201
    old.refresh_from_db()
    assert old.status == "expired"
    assert client_for("admin").get(url("key-detail", "acme", old.pk)).json()["status"] == "expired"


@pytest.mark.parametrize("grace_hours", [-1, 721, "2", 1.5, None, True])
def test_rotate_rejects_bad_grace_hours(client_for, org, team, grace_hours):
    key, _ = issue_key(actor=SYSTEM, team=team, name="svc")
    response = post(client_for("admin"), url("key-rotate", "acme", key.pk), {"grace_hours": grace_hours})
    assert_field_errors(response, "grace_hours")
    assert CallerKey.objects.count() == 1


def test_rotate_and_revoke_access(client_for, org, key_set):
    for role in ("developer", "viewer", "finance", "auditor"):
        assert post(client_for(role), url("key-rotate", "acme", key_set["viewer"].pk)).status_code == 403, role
        assert post(client_for(role), url("key-revoke", "acme", key_set["viewer"].pk)).status_code == 403, role
    assert post(token_client(org, "auditor"), url("key-revoke", "acme", key_set["viewer"].pk)).status_code == 403
    assert CallerKey.objects.get(pk=key_set["viewer"].pk).status == "active"


def test_revoke_key(client_for, org, users, key_set):
    client = client_for("developer")
    path = url("key-revoke", "acme", key_set["developer"].pk)
    response = post(client, path)
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert response.json()["revoked_at"] is not None
    event = assert_event(org, "key.revoked", str(users["developer"].uuid))
    assert event.target_id == str(key_set["developer"].pk)
    assert post(client, path).json() == {"key": ["This key is already revoked."]}


# Bulk revoke -------------------------------------------------------------------------------


def active_names(org) -> list[str]:
    return sorted(CallerKey.objects.filter(org=org).active().values_list("name", flat=True))


def test_admin_bulk_revokes_a_team_or_a_person(client_for, org, team, users, key_set):
    client = client_for("admin")
    response = post(client, url("key-bulk-revoke", "acme"), {"user": str(users["developer"].uuid)})
    assert (response.status_code, response.json()) == (200, {"revoked": 1})
    event = assert_event(org, "key.bulk_revoked", str(users["admin"].uuid))
    assert event.diff["keys"]["after"] == [str(key_set["developer"].pk)]
    response = post(client, url("key-bulk-revoke", "acme"), {"team": str(team.pk)})
    assert response.json() == {"revoked": 2}
    assert active_names(org) == ["data pipeline"]


def test_team_admin_bulk_revokes_their_team_only(client_for, org, team, data_team, users, key_set, viewer_team_admin):
    client = client_for("viewer")
    path = url("key-bulk-revoke", "acme")
    developer = str(users["developer"].uuid)
    assert post(client, path, {"team": str(data_team.pk)}).status_code == 403
    assert post(client, path, {"user": developer}).status_code == 403  # every team: an admin's call
    response = post(client, path, {"team": str(team.pk), "user": developer})
    assert response.json() == {"revoked": 1}
    assert_event(org, "key.bulk_revoked", str(users["viewer"].uuid))
    assert post(client, path, {"team": str(team.pk)}).json() == {"revoked": 2}
    assert active_names(org) == ["data pipeline"]


def test_bulk_revoke_refusals(client_for, org, team, key_set):
    path = url("key-bulk-revoke", "acme")
    for role in ("developer", "viewer", "finance", "auditor"):
        assert post(client_for(role), path, {"team": str(team.pk)}).status_code == 403, role
    assert post(token_client(org, "finance"), path, {"team": str(team.pk)}).status_code == 403
    client = client_for("admin")
    assert post(client, path, {}).json() == {"non_field_errors": ["Name a team, a person, or both."]}
    assert_field_errors(post(client, path, {"team": "nope"}), "team")
    assert_field_errors(post(client, path, {"user": 12}), "user")
    unknown = "6f1c1f4e-0000-4000-8000-000000000000"
    assert post(client, path, {"team": unknown}).status_code == 404
    assert len(active_names(org)) == 4


# Provider credentials ----------------------------------------------------------------------


def credential_body(**fields) -> dict:
    return {"name": "OpenAI prod", "provider": "openai", "secrets": {"api_key": CANARY}, **fields}


@pytest.fixture
def credential(org, actors, fresh_key_ring):
    return create_credential(
        actor=actors["admin"],
        org=org,
        name="Local",
        provider="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        secrets={"api_key": "sk-local-0000000000001234"},
    )


def test_create_credential(client_for, org, team, users, fresh_key_ring):
    client = client_for("admin")
    response = post(client, url("credential-list", "acme"), credential_body(teams=[str(team.pk)]))
    assert response.status_code == 201, response.json()
    body = response.json()
    credential = ProviderCredential.objects.get(pk=body["id"], org=org)
    assert body == {
        "id": str(credential.pk),
        "name": "OpenAI prod",
        "provider": "openai",
        "base_url": "",
        "azure_endpoint": "",
        "azure_api_version": "",
        "region": "",
        "project": "",
        "access_key_id": "",
        "role_arn": "",
        "teams": [{"id": str(team.pk), "name": "Platform"}],
        "secret_hints": {
            "api_key": {"last4": CANARY[-4:], "fingerprint": credential.secret_hints["api_key"]["fingerprint"]}
        },
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
        "last_tested_at": None,
        "last_test_ok": None,
        "last_test_message": "",
    }
    assert open_secret(credential) == CANARY
    event = assert_event(org, "credential.created", str(users["admin"].uuid))
    assert event.diff["api_key"]["after"] == "***" + CANARY[-4:]


def test_create_azure_and_compatible_credentials(client_for, org, fresh_key_ring):
    client = client_for("owner")
    azure = post(
        client,
        url("credential-list", "acme"),
        credential_body(
            name="Azure",
            provider="azure_openai",
            azure_endpoint="http://127.0.0.1:8443",
            azure_api_version="2024-10-21",
        ),
    )
    assert azure.status_code == 201, azure.json()
    assert (azure.json()["azure_endpoint"], azure.json()["azure_api_version"]) == (
        "http://127.0.0.1:8443",
        "2024-10-21",
    )
    compatible = post(
        client, url("credential-list", "acme"), credential_body(name="Local", provider="openai_compatible")
    )
    assert compatible.json() == {"base_url": ["An OpenAI-compatible provider needs a base URL."]}


SSRF_URLS = [
    "http://169.254.169.254/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://10.0.0.8/v1",
    "http://metadata.google.internal/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "http://user:pass@127.0.0.1/v1",
    "http://",
    "not a url",
    "http://8.8.8.8:99999/",
    "http://[::1/",
    "http://[zz]/",
    "https://" + "a" * 500 + ".test/",
]


@pytest.mark.parametrize("base_url", SSRF_URLS)
def test_credential_base_url_is_checked_against_ssrf(client_for, org, fresh_key_ring, base_url):
    data = credential_body(provider="openai_compatible", base_url=base_url)
    response = post(client_for("admin"), url("credential-list", "acme"), data)
    assert_field_errors(response, "base_url")
    assert CANARY not in response.content.decode()
    assert not ProviderCredential.objects.exists()


BAD_SECRETS = [
    {},
    {"api_key": ""},
    {"api_key": "   "},
    {"api_key": None},
    {"api_key": 12345},
    {"api_key": ["sk-1"]},
    {"api_key": "sk-" + "x" * 1_048_576},
    {"api_key": "sk-line\nbreak"},
    {"api_key": "sk-nul\x00"},
    {"password": "hunter2"},
    "sk-plain-string",
    ["sk-1"],
    None,
]


@pytest.mark.parametrize("secrets", BAD_SECRETS, ids=range(len(BAD_SECRETS)))
def test_credential_secrets_are_checked(client_for, org, fresh_key_ring, secrets):
    response = post(client_for("admin"), url("credential-list", "acme"), credential_body(secrets=secrets))
    assert_field_errors(response, "secrets")
    assert len(response.content) < 500
    assert not ProviderCredential.objects.exists()


def test_credential_without_secrets_is_refused(client_for, org, fresh_key_ring):
    data = credential_body()
    del data["secrets"]
    assert_field_errors(post(client_for("admin"), url("credential-list", "acme"), data), "secrets")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 5}, "name"),
        ({"provider": "cohere"}, "provider"),
        ({"provider": None}, "provider"),
        ({"teams": "all"}, "teams"),
        ({"teams": ["nope"]}, "teams"),
        ({"teams": [str(i) for i in range(101)]}, "teams"),
        ({"base_url": 7}, "base_url"),
        ({"azure_api_version": "v" * 33}, "azure_api_version"),
    ],
)
def test_create_credential_rejects_bad_input(client_for, org, fresh_key_ring, extra, field):
    response = post(client_for("admin"), url("credential-list", "acme"), credential_body(**extra))
    assert_field_errors(response, field)
    assert CANARY not in response.content.decode()


def test_credential_names_are_unique_in_the_org(client_for, org, credential):
    response = post(client_for("admin"), url("credential-list", "acme"), credential_body(name="LOCAL"))
    assert response.json() == {"name": ["A credential with this name already exists."]}


def test_credential_list_shows_names_to_everyone_and_records_to_readers(client_for, org, credential):
    for role in ("developer", "viewer"):
        response = client_for(role).get(url("credential-list", "acme"))
        assert response.status_code == 200
        assert response.json()["results"] == [
            {"id": str(credential.pk), "name": "Local", "provider": "openai_compatible"}
        ]
    assert token_client(org, "viewer").get(url("credential-list", "acme")).json()["results"][0].keys() == {
        "id",
        "name",
        "provider",
    }
    for role in ("auditor", "finance", "admin"):
        [row] = client_for(role).get(url("credential-list", "acme")).json()["results"]
        assert (row["base_url"], row["secret_hints"]["api_key"]["last4"]) == ("http://127.0.0.1:9/v1", "1234")
    response = client_for("auditor").get(url("credential-list", "acme"), {"provider": "openai"})
    assert response.json()["results"] == []
    assert len(client_for("auditor").get(url("credential-list", "acme"), {"q": "loc"}).json()["results"]) == 1
    assert_field_errors(client_for("auditor").get(url("credential-list", "acme"), {"provider": "x"}), "provider")


def test_credential_detail_and_writes_need_their_capabilities(client_for, org, credential):
    detail = url("credential-detail", "acme", credential.pk)
    assert client_for("auditor").get(detail).json()["name"] == "Local"
    for role in ("developer", "viewer"):
        assert client_for(role).get(detail).status_code == 403
    for role in ("developer", "viewer", "finance", "auditor"):
        client = client_for(role)
        assert post(client, url("credential-list", "acme"), credential_body()).status_code == 403
        assert patch(client, detail, {"name": "Mine"}).status_code == 403
        assert client.delete(detail).status_code == 403
        assert post(client, url("credential-test", "acme", credential.pk)).status_code == 403
    assert ProviderCredential.objects.get().name == "Local"


def test_another_orgs_credentials_and_teams_are_404(client_for, org, other_org, other_team, credential, actors):
    foreign = create_credential(
        actor=SYSTEM, org=other_org, name="Theirs", provider="openai", secrets={"api_key": "sk-x1"}
    )
    client = client_for("owner")
    detail = url("credential-detail", "acme", foreign.pk)
    assert client.get(detail).status_code == 404
    assert patch(client, detail, {"name": "Mine"}).status_code == 404
    assert client.delete(detail).status_code == 404
    assert post(client, url("credential-test", "acme", foreign.pk)).status_code == 404
    data = credential_body(name="New", teams=[str(other_team.pk)])
    assert post(client, url("credential-list", "acme"), data).status_code == 404
    mine = url("credential-detail", "acme", credential.pk)
    assert patch(client, mine, {"teams": [str(other_team.pk)]}).status_code == 404
    assert ProviderCredential.objects.filter(org=org).count() == 1
    assert not credential.teams.exists()


def test_update_credential(client_for, org, team, users, credential):
    client = client_for("admin")
    path = url("credential-detail", "acme", credential.pk)
    response = patch(client, path, {"name": "Local sim", "teams": [str(team.pk)]})
    assert response.status_code == 200, response.json()
    assert (response.json()["name"], response.json()["teams"]) == (
        "Local sim",
        [{"id": str(team.pk), "name": "Platform"}],
    )
    event = assert_event(org, "credential.updated", str(users["admin"].uuid))
    assert event.diff["name"] == {"before": "Local", "after": "Local sim"}
    # Teams stay as they are unless given; a new base URL needs the key again.
    response = patch(client, path, {"base_url": "http://127.0.0.1:10/v1", "secrets": {"api_key": "sk-local-00001234"}})
    assert (response.json()["base_url"], len(response.json()["teams"])) == ("http://127.0.0.1:10/v1", 1)
    assert patch(client, path, {"teams": []}).json()["teams"] == []

    response = patch(client, path, {"secrets": {"api_key": CANARY}})
    assert response.status_code == 200
    assert response.json()["secret_hints"]["api_key"]["last4"] == CANARY[-4:]
    credential.refresh_from_db()
    assert open_secret(credential) == CANARY
    event = assert_event(org, "credential.secret_replaced", str(users["admin"].uuid))
    assert event.diff["api_key"] == {"before": "***1234", "after": "***" + CANARY[-4:]}

    assert patch(client, path, {"provider": "openai_compatible"}).status_code == 200
    assert patch(client, path, {"provider": "openai"}).json() == {
        "provider": ["A credential's provider cannot change: register a new credential."]
    }
    assert_field_errors(patch(client, path, {"base_url": "http://169.254.169.254/"}), "base_url")
    assert_field_errors(patch(client, path, {"secrets": {"api_key": ""}}), "secrets")
    assert_field_errors(patch(client, path, {"name": ""}), "name")


def test_delete_credential(client_for, org, users, credential, actors):
    client = client_for("admin")
    deployment = create_deployment(
        actor=actors["admin"],
        org=org,
        name="local",
        credential=credential,
        upstream_model="m",
        input_price_per_mtok="1",
        output_price_per_mtok="1",
    )
    path = url("credential-detail", "acme", credential.pk)
    assert client.delete(path).json() == {"credential": ["Deployments use this credential: local. Remove them first."]}
    deployment.delete()
    assert client.delete(path).status_code == 204
    assert not ProviderCredential.objects.exists()
    event = assert_event(org, "credential.deleted", str(users["admin"].uuid))
    assert event.target_id == str(credential.pk)
    assert client.delete(path).status_code == 404


def test_test_credential_reports_the_outcome(client_for, org, users, actors, fresh_key_ring, provider_simulator):
    credential = create_credential(
        actor=actors["admin"],
        org=org,
        name="Simulated",
        provider="openai_compatible",
        base_url=f"{provider_simulator.url}/v1",
        secrets={"api_key": CANARY},
    )
    client = client_for("admin")
    response = post(client, url("credential-test", "acme", credential.pk))
    assert response.status_code == 200
    body = response.json()
    assert (body["ok"], body["message"]) == (True, "Connected: the provider accepted the credential.")
    assert body["tested_at"] is not None
    assert_event(org, "credential.tested", str(users["admin"].uuid))
    detail = client.get(url("credential-detail", "acme", credential.pk)).json()
    assert (detail["last_test_ok"], detail["last_tested_at"]) == (True, body["tested_at"])

    provider_simulator.configure(rejected_keys=[CANARY])
    response = post(client, url("credential-test", "acme", credential.pk))
    assert response.json()["ok"] is False
    assert response.json()["message"] == "Authentication failed (401): the provider refused the key."
    assert CANARY not in response.content.decode()


def test_a_canary_secret_never_leaves(client_for, org, team, fresh_key_ring, provider_simulator):
    """A secret POSTed through every path never appears in a response, an error or the audit trail."""
    client = client_for("admin")
    responses = []

    def send(method: str, path: str, data=None):
        response = client.generic(
            method, path, "" if data is None else json.dumps(data), content_type="application/json"
        )
        responses.append(response)
        return response

    base = f"{provider_simulator.url}/v1"
    created = send(
        "POST",
        url("credential-list", "acme"),
        credential_body(provider="openai_compatible", base_url=base, teams=[str(team.pk)]),
    )
    assert created.status_code == 201
    path = url("credential-detail", "acme", created.json()["id"])
    provider_simulator.configure(rejected_keys=[CANARY])
    send("POST", url("credential-test", "acme", created.json()["id"]))
    refused = [
        credential_body(name="OPENAI PROD"),
        credential_body(name="Dup 2", provider="openai_compatible", base_url="http://169.254.169.254/"),
        credential_body(name="Dup 3", secrets={"api_key": CANARY + "\nX-Extra: 1"}),
        credential_body(name="Dup 4", secrets={"api_key": CANARY * 1000}),
        credential_body(name="Dup 5", secrets={CANARY: CANARY}),
        credential_body(name="Dup 6", secrets={"api_key": [CANARY]}),
        credential_body(name="Dup 7", secrets={"api_key": {"value": CANARY}}),
        credential_body(name="", secrets={"api_key": CANARY}),
        credential_body(name="OpenAI prod", secrets={"api_key": CANARY}),
        {"name": "Dup 8", "provider": CANARY, "secrets": {"api_key": CANARY}},
        credential_body(name="Dup 9", teams=[CANARY]),
        credential_body(name="Dup 10", base_url=CANARY),
        credential_body(name="Dup 11", provider="openai_compatible", base_url=f"http://{CANARY}:99999/"),
    ]
    for data in refused:
        assert send("POST", url("credential-list", "acme"), data).status_code == 400, data
    send("PATCH", path, {"secrets": {"api_key": CANARY}})
    send("PATCH", path, {"secrets": {"api_key": CANARY + "\x07"}})
    send("PATCH", path, {"secrets": {"api_key": CANARY}, "base_url": "file:///etc/passwd"})
    send("GET", path)
    send("GET", url("credential-list", "acme"))
    client.cookies.clear()
    responses.append(client_for("developer").get(url("credential-list", "acme")))

    for response in responses:
        assert CANARY not in response.content.decode(), response.content
        assert CANARY[-12:] not in response.content.decode()
    for event in AuditEvent.objects.filter(org=org):
        assert CANARY not in str(event.diff)
        assert CANARY not in event.target_label
    events = AuditEvent.objects.filter(org=org, action__startswith="credential.").values_list("action", flat=True)
    assert set(events) >= {"credential.created", "credential.tested", "credential.secret_replaced"}
    # Nor anywhere else in the database.
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s', [f"%{CANARY[-12:]}%"])  # noqa: S608
            assert cursor.fetchone()[0] == 0, table


@pytest.mark.parametrize("role", ["developer", "auditor"])
def test_credential_list_query_count_is_constant(client_for, org, team, role, fresh_key_ring):
    client = client_for(role)
    path = url("credential-list", "acme")
    client.get(path)

    def add(count: int, start: int) -> None:
        for i in range(start, start + count):
            create_credential(
                actor=SYSTEM, org=org, name=f"C{i}", provider="openai", secrets={"api_key": f"sk-{i}"}, teams=[team]
            )

    def count_queries(expected_rows: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path)
        assert len(response.json()["results"]) == expected_rows
        return len(queries)

    add(3, 0)
    few = count_queries(3)
    add(27, 3)
    assert count_queries(30) == few

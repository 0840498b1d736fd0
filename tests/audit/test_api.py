"""GET /api/v1/orgs/<org_slug>/audit-events/: the org's trail, newest first, in keyset pages."""

from datetime import datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from orgs.services import create_api_token, create_team, revoke_api_token
from tests.conftest import SYSTEM


def url(org_slug: str = "acme") -> str:
    return reverse("api:audit:event-list", args=[org_slug])


def token_client(org, role: str) -> tuple[Client, object]:
    token, plaintext = create_api_token(actor=SYSTEM, org=org, name=f"{role} export", role=role)
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}"), token


def add_teams(org, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        create_team(actor=SYSTEM, org=org, name=f"Team {i}")


def test_events_newest_first_with_every_field(client_for, org, team):
    client = client_for("auditor")  # signing in may record an event of its own
    events = list(AuditEvent.objects.filter(org=org).order_by("-sequence"))
    response = client.get(url())
    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None
    assert [e["sequence"] for e in body["results"]] == [e.sequence for e in events]
    newest, listed = events[0], body["results"][0]
    assert listed == {
        "id": str(newest.uuid),
        "sequence": newest.sequence,
        "action": newest.action,
        "actor": {"type": newest.actor_type, "id": newest.actor_id, "label": newest.actor_label},
        "target": {"type": newest.target_type, "id": newest.target_id, "label": newest.target_label},
        "diff": newest.diff,
        "ip": newest.ip,
        "user_agent": newest.user_agent,
        "request_id": newest.request_id,
        "created_at": listed["created_at"],
        "prev_hash": newest.prev_hash,
        "hash": newest.hash,
    }
    assert datetime.fromisoformat(listed["created_at"]) == newest.created_at
    for newer, older in zip(body["results"], body["results"][1:], strict=False):
        assert newer["prev_hash"] == older["hash"]


def test_an_api_write_is_listed_with_its_request(client_for, org, users):
    client = client_for("admin")
    response = client.post(
        reverse("api:orgs:team-list", args=["acme"]),
        {"name": "Data"},
        content_type="application/json",
        HTTP_USER_AGENT="release-bot/2.1",
        HTTP_X_REQUEST_ID="req-7f3a",
    )
    assert response.status_code == 201
    newest = client.get(url()).json()["results"][0]
    assert newest["action"] == "team.created"
    assert newest["actor"] == {"type": "user", "id": str(users["admin"].uuid), "label": "admin@acme.test"}
    assert newest["target"] == {"type": "team", "id": response.json()["id"], "label": "Data"}
    assert newest["diff"]["name"] == {"before": None, "after": "Data"}
    assert (newest["ip"], newest["user_agent"], newest["request_id"]) == ("127.0.0.1", "release-bot/2.1", "req-7f3a")


def test_keyset_pages_cover_the_trail_once_while_events_arrive(client_for, org):
    add_teams(org, 6)
    client = client_for("auditor")
    total = AuditEvent.objects.filter(org=org).count()
    page = client.get(url(), {"limit": 3}).json()
    seen = [e["sequence"] for e in page["results"]]
    add_teams(org, 2, start=100)  # newer events must not shift the pages that follow
    while page["next"]:
        page = client.get(page["next"]).json()
        assert len(page["results"]) <= 3
        seen += [e["sequence"] for e in page["results"]]
    assert seen == list(range(total, 0, -1))


def test_before_and_action_filters(client_for, org, team):
    client = client_for("auditor")
    older = client.get(url(), {"before": 3}).json()["results"]
    assert [e["sequence"] for e in older] == [2, 1]
    added = client.get(url(), {"action": "team.member_added"}).json()["results"]
    expected = AuditEvent.objects.filter(org=org, action="team.member_added").order_by("-sequence")
    assert [e["sequence"] for e in added] == [e.sequence for e in expected]
    assert len(added) == 2
    assert client.get(url(), {"action": "no.such"}).json() == {"next": None, "results": []}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"before": "abc"}, "before"),
        ({"before": "0"}, "before"),
        ({"before": "-5"}, "before"),
        ({"before": str(10**30)}, "before"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-02-30"}, "until"),
        ({"ip": "300.1.1.1"}, "ip"),
        ({"team": "not-a-uuid"}, "team"),
    ],
)
def test_bad_query_parameters_get_field_errors(client_for, org, params, field):
    response = client_for("auditor").get(url(), params)
    assert response.status_code == 400
    assert list(response.json()) == [field]


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("auditor", 200), ("finance", 403), ("developer", 403), ("viewer", 403)],
)
def test_audit_read_is_required(client_for, org, role, status):
    assert client_for(role).get(url()).status_code == status


def test_outsiders_and_other_orgs(client_for, org, other_org):
    assert client_for("outsider").get(url()).status_code == 404
    assert client_for("owner").get(url("other")).status_code == 404
    listed = {e["id"] for e in client_for("owner").get(url()).json()["results"]}
    assert listed == {str(u) for u in AuditEvent.objects.filter(org=org).values_list("uuid", flat=True)}
    assert not listed & {str(u) for u in AuditEvent.objects.filter(org=other_org).values_list("uuid", flat=True)}


def test_tokens(org, other_org):
    auditor, token = token_client(org, "auditor")
    assert auditor.get(url()).status_code == 200
    viewer, _ = token_client(org, "viewer")
    assert viewer.get(url()).status_code == 403
    foreign, _ = token_client(other_org, "owner")
    assert foreign.get(url()).status_code == 404
    revoke_api_token(actor=SYSTEM, token=token)
    assert auditor.get(url()).status_code == 401
    assert Client().get(url()).status_code == 401


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_trail_cannot_be_written_through_the_api(client_for, org, method):
    client = client_for("owner")
    before = AuditEvent.objects.filter(org=org).count()
    response = getattr(client, method)(url(), {}, content_type="application/json")
    assert response.status_code == 405
    assert AuditEvent.objects.filter(org=org).count() == before


def test_query_count_is_constant(client_for, org):
    client = client_for("auditor")
    client.get(url())  # the first request may set up the session

    def count_queries(expected_rows: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url())
        assert len(response.json()["results"]) >= expected_rows
        return len(queries)

    add_teams(org, 3)
    few = count_queries(3)
    add_teams(org, 27, start=3)
    assert count_queries(30) == few

"""The gateway fleet over the API, /api/v1/fleet/: platform staff only."""

import socket

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from fleet import services
from fleet.models import ConfigRevision
from fleet.redis_client import redis_client, redis_keys
from orgs.models import User
from orgs.services import create_api_token
from sla.models import ModelRoute
from sla.services import delete_route
from tests.conftest import SYSTEM
from tests.factories import make_routes
from tests.plugins.fleet_state import heartbeat


def url(name: str, *args) -> str:
    return reverse(f"api:fleet:{name}", args=args)


def post(client: Client, path: str, data=None):
    return client.post(path, data if data is not None else {}, content_type="application/json")


# Who may -------------------------------------------------------------------------------------


def test_only_platform_staff_may_use_the_fleet_api(client_for, org, users, revisions, staff_client):
    first = revisions[0].number
    gets = [("node-list", ()), ("revision-list", ()), ("revision-diff", (first,))]
    posts = [("revision-rollback", (first,)), ("republish", ())]
    anonymous = Client()
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name="ci", role="owner")
    owner_token = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    staff_but_not_superuser = User.objects.create_user(email="ops@gatehouse.test", is_staff=True)
    ops = Client()
    ops.force_login(staff_but_not_superuser)
    for name, args in gets + posts:
        send = (lambda c, path: c.get(path)) if (name, args) in gets else post
        path = url(name, *args)
        assert send(anonymous, path).status_code == 401, name
        for role in ("owner", "admin", "auditor", "outsider"):
            response = send(client_for(role), path)
            assert (response.status_code, response.json()) == (403, {"detail": "Only platform staff may do this."})
        assert send(owner_token, path).status_code == 403, name
        assert send(ops, path).status_code == 403, name
    assert ConfigRevision.objects.count() == 2
    for name, args in gets:
        assert staff_client.get(url(name, *args)).status_code == 200, name


# Nodes ---------------------------------------------------------------------------------------


def test_node_list_reads_heartbeats(staff_client, revisions, clean_redis):
    newest = revisions[-1].number
    heartbeat(clean_redis, "worker-b", seconds_ago=2, revision=newest)
    heartbeat(clean_redis, "worker-a", seconds_ago=30, revision=newest - 1, last_error="redis unreachable: timeout")
    heartbeat(clean_redis, "worker-c", seconds_ago=601, revision=newest - 1, last_rejected="bad signature")
    heartbeat(clean_redis, "worker-d", seconds_ago=5)  # started, no config yet
    response = staff_client.get(url("node-list"))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    nodes = {node["node_id"]: node for node in body["results"]}
    assert [node["node_id"] for node in body["results"]] == ["worker-a", "worker-b", "worker-c", "worker-d"]
    a = nodes["worker-a"]
    assert a == {
        "node_id": "worker-a",
        "host": "host-worker-a",
        "pid": 4242,
        "revision": newest - 1,
        "config_hash": "ab12cd34" * 8,
        "lag": 1,
        "heartbeat_at": a["heartbeat_at"],
        "seconds_since_heartbeat": a["seconds_since_heartbeat"],
        "started_at": a["started_at"],
        "last_error": "redis unreachable: timeout",
        "last_rejected": "",
        "stale": False,
    }
    assert 29 <= a["seconds_since_heartbeat"] < 40
    assert a["heartbeat_at"].endswith("Z")
    assert (nodes["worker-b"]["lag"], nodes["worker-b"]["stale"]) == (0, False)
    assert (nodes["worker-c"]["stale"], nodes["worker-c"]["last_rejected"]) == (True, "bad signature")
    assert (nodes["worker-d"]["revision"], nodes["worker-d"]["lag"], nodes["worker-d"]["config_hash"]) == (
        None,
        None,
        "",
    )


def test_a_node_whose_heartbeat_hash_expired_is_still_listed_as_stale(staff_client, clean_redis, revisions):
    heartbeat(clean_redis, "gone", seconds_ago=7200, revision=revisions[0].number)
    clean_redis.delete(redis_keys().node("gone"))
    [node] = staff_client.get(url("node-list")).json()["results"]
    assert (node["node_id"], node["host"], node["revision"], node["lag"], node["stale"]) == (
        "gone",
        "",
        None,
        None,
        True,
    )
    assert node["seconds_since_heartbeat"] >= 7200


def test_node_list_without_nodes_or_revisions(staff_client, clean_redis):
    assert staff_client.get(url("node-list")).json()["results"] == []
    heartbeat(clean_redis, "early", seconds_ago=1, revision=7)
    [node] = staff_client.get(url("node-list")).json()["results"]
    assert (node["revision"], node["lag"]) == (7, None)


def test_node_list_query_count_is_constant(staff_client, clean_redis, revisions):
    staff_client.get(url("node-list"))

    def count_queries(expected: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert len(staff_client.get(url("node-list")).json()["results"]) == expected
        return len(queries)

    newest = revisions[-1].number
    for i in range(3):
        heartbeat(clean_redis, f"n{i:02d}", seconds_ago=1, revision=newest)
    few = count_queries(3)
    for i in range(3, 30):
        heartbeat(clean_redis, f"n{i:02d}", seconds_ago=1, revision=newest)
    assert count_queries(30) == few


def test_a_real_worker_shows_up_with_no_lag(served, gateway_workers, staff_client):
    [worker] = gateway_workers(1)
    newest = ConfigRevision.objects.order_by("-number").first().number
    worker.wait(lambda: staff_client.get(url("node-list")).json()["count"] == 1)
    [node] = staff_client.get(url("node-list")).json()["results"]
    assert (node["node_id"], node["revision"], node["lag"], node["stale"]) == (worker.node_id, newest, 0, False)
    assert node["host"] == socket.gethostname()
    assert node["config_hash"] == worker.get("/readyz").json()["config_hash"]


# Revisions -----------------------------------------------------------------------------------


def test_revision_list_is_newest_first(staff_client, revisions, org):
    first, second = revisions
    body = staff_client.get(url("revision-list")).json()
    assert body["count"] == 2
    newest = body["results"][0]
    cause = AuditEvent.objects.get(pk=second.cause_id)
    assert newest == {
        "number": second.number,
        "kind": "delta",
        "sha256": second.sha256,
        "size": second.size,
        "summary": "1 route",
        "cause": str(cause.uuid),
        "created_at": newest["created_at"],
    }
    assert cause.action == "route.deleted"
    assert (body["results"][1]["number"], body["results"][1]["kind"]) == (first.number, "full")
    page = staff_client.get(url("revision-list"), {"limit": 1}).json()
    assert [r["number"] for r in page["results"]] == [second.number]


def test_revision_list_query_count_is_constant(staff_client, org, actors, clean_redis, fresh_key_ring):
    routes = make_routes(org, actors["admin"], aliases=("a", "b", "c"))
    services.publish_pending()
    staff_client.get(url("revision-list"))

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            staff_client.get(url("revision-list"))
        return len(queries)

    few = count_queries()
    for route in routes.values():
        delete_route(actor=actors["admin"], route=route)
        services.publish_pending()
    assert ConfigRevision.objects.count() == 4
    assert count_queries() == few


def test_diff_between_revisions(staff_client, revisions):
    first, second = revisions
    o1 = ModelRoute.objects.filter(alias="o1").first()
    assert o1 is None
    body = staff_client.get(url("revision-diff", second.number)).json()
    assert (body["revision"], body["against"]) == (second.number, first.number)
    [change] = body["changes"]
    assert (change["type"], change["after"]) == ("route", None)
    assert change["before"]["alias"] == "o1"

    explicit = staff_client.get(url("revision-diff", first.number), {"against": second.number}).json()
    assert explicit["changes"] == body["changes"]

    # The first revision, against nothing: everything is new, and sealed secrets stay sealed.
    initial = staff_client.get(url("revision-diff", first.number)).json()
    assert initial["against"] is None
    credential = next(c for c in initial["changes"] if c["type"] == "credential")
    assert credential["after"]["sealed_api_key"].startswith("(sealed) ")
    assert "sk-simulator-test-0000" not in str(initial)


def test_diff_refusals(staff_client, revisions):
    newest = revisions[-1].number
    assert staff_client.get(url("revision-diff", newest + 1000)).status_code == 404
    assert staff_client.get(url("revision-diff", 2**63)).status_code == 404
    for against in (newest + 1000, 0, "two", 2**63):
        response = staff_client.get(url("revision-diff", newest), {"against": against})
        assert response.status_code == 400
        assert list(response.json()) == ["against"]


def test_rollback(staff_client, staff, revisions, clean_redis):
    first, second = revisions
    response = post(staff_client, url("revision-rollback", first.number))
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["kind"], body["summary"]) == ("full", f"rollback to revision {first.number}")
    assert body["number"] > second.number
    event = AuditEvent.objects.get(action="fleet.rolled_back")
    assert (event.org_id, event.actor_type, event.actor_id, event.actor_label) == (
        None,
        "user",
        str(staff.uuid),
        "staff@gatehouse.test",
    )
    assert body["cause"] == str(event.uuid)
    assert int(clean_redis.get(redis_keys().latest)) == body["number"]
    # The rolled-back config has the deleted route again, and nothing else differs.
    assert services.diff_revisions(first.number, body["number"]) == []

    latest = post(staff_client, url("revision-rollback", body["number"]))
    assert latest.json() == {"revision": [f"Revision {body['number']} is the one running."]}
    assert post(staff_client, url("revision-rollback", body["number"] + 1000)).status_code == 404
    assert post(staff_client, url("revision-rollback", 2**63)).status_code == 404
    assert ConfigRevision.objects.count() == 3


def test_republish(staff_client, staff, revisions, clean_redis):
    response = post(staff_client, url("republish"), {"reason": "Redis was restored from an old backup"})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["kind"], body["summary"]) == ("full", "republished from the database")
    event = AuditEvent.objects.get(action="fleet.republished")
    assert (event.actor_id, event.diff) == (
        str(staff.uuid),
        {"reason": {"after": "Redis was restored from an old backup"}},
    )
    assert body["cause"] == str(event.uuid)
    assert int(clean_redis.get(redis_keys().latest)) == body["number"]
    assert post(staff_client, url("republish")).status_code == 201
    for reason in ("x" * 301, "bell\x07", 5):
        response = post(staff_client, url("republish"), {"reason": reason})
        assert (response.status_code, list(response.json())) == (400, ["reason"])
    assert ConfigRevision.objects.count() == 4


@pytest.fixture
def redis_down(settings):
    """The control plane's Redis client pointed at a port nothing listens on."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_client.cache_clear()
    yield
    redis_client.cache_clear()


def test_redis_down(staff_client, revisions, redis_down):
    first, second = revisions
    response = staff_client.get(url("node-list"))
    assert response.status_code == 503
    assert "Redis cannot be reached" in response.json()["detail"]
    # Revisions live in PostgreSQL: listing and comparing them needs no Redis.
    assert staff_client.get(url("revision-list")).json()["count"] == 2
    assert staff_client.get(url("revision-diff", second.number)).status_code == 200
    # A rollback is saved before it is copied to Redis; it stands, and the answer says so.
    response = post(staff_client, url("revision-rollback", first.number))
    assert response.status_code == 503
    assert response.json()["detail"].startswith("The revision is saved")
    assert ConfigRevision.objects.count() == 3
    assert AuditEvent.objects.filter(action="fleet.rolled_back").count() == 1
    assert post(staff_client, url("republish")).status_code == 503
    assert ConfigRevision.objects.count() == 4

"""Fleet fixtures: platform staff, two published revisions, and fake worker heartbeats."""

import time

import pytest
from django.test import Client

from fleet import services
from fleet.models import ConfigRevision
from fleet.redis_client import redis_keys
from orgs.models import User
from sla.services import delete_route
from tests.factories import make_routes


@pytest.fixture
def staff(db) -> User:
    return User.objects.create_superuser(email="staff@gatehouse.test", password="not-used-here-0000")


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def revisions(org, actors, clean_redis, fresh_key_ring) -> list[ConfigRevision]:
    """Revision 1 (the first snapshot: three routes) and revision 2 (a delta: o1 removed)."""
    routes = make_routes(org, actors["admin"])
    first = services.publish_pending()
    delete_route(actor=actors["admin"], route=routes["o1"])
    second = services.publish_pending()
    return [first, second]


def heartbeat(client, node_id: str, *, seconds_ago: float, revision="", **fields) -> None:
    """What a gateway worker writes (gateway/redis_keys.py): its hash and its score."""
    keys = redis_keys()
    beat = time.time() - seconds_ago
    state = {
        "node_id": node_id,
        "host": f"host-{node_id}",
        "pid": "4242",
        "revision": str(revision),
        "config_hash": "ab12cd34" * 8 if revision else "",
        "last_error": "",
        "last_rejected": "",
        "started_at": f"{beat - 60:.3f}",
        "heartbeat_at": f"{beat:.3f}",
        **fields,
    }
    client.hset(keys.node(node_id), mapping=state)
    client.zadd(keys.nodes, {node_id: beat})

"""The gateway fleet as its heartbeats in Redis describe it, for the fleet API and pages.

Each worker writes a hash of its state and its id into a sorted set scored by the heartbeat
time (gateway/follower.py). The hash expires an hour after the last heartbeat; the id stays,
so a long-silent node is still listed, as stale, with what little is left of it.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from .models import ConfigRevision
from .redis_client import redis_client, redis_keys

STALE_AFTER = timedelta(seconds=60)  # twelve missed heartbeats at the default 5 s


@dataclass(frozen=True)
class FleetNode:
    node_id: str
    host: str
    pid: int | None
    revision: int | None
    config_hash: str
    lag: int | None  # revisions behind the newest in PostgreSQL; None while the node has none
    heartbeat_at: datetime
    seconds_since_heartbeat: float
    started_at: datetime | None
    last_error: str
    last_rejected: str
    stale: bool
    open_breakers: int = 0  # deployments whose circuit breaker is open or half-open on this node


def _breaker_count(value: bytes | None) -> int:
    try:
        return len(json.loads(value)) if value else 0
    except (ValueError, TypeError):
        return 0


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def _integer(value: bytes | None) -> int | None:
    try:
        return int(_text(value))
    except ValueError:
        return None


def _moment(value: bytes | float | None) -> datetime | None:
    try:
        seconds = float(value.decode() if isinstance(value, bytes) else value)  # type: ignore[arg-type]
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError, UnicodeDecodeError):
        return None


def newest_revision_number() -> int | None:
    return ConfigRevision.objects.order_by("-number").values_list("number", flat=True).first()


def fleet_nodes(*, now: datetime | None = None) -> list[FleetNode]:
    """Every node that has sent a heartbeat, sorted by node id: two Redis round trips and one
    query, however large the fleet."""
    now = now or timezone.now()
    client, keys = redis_client(), redis_keys()
    members = client.zrange(keys.nodes, 0, -1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for member, _ in members:
        pipe.hgetall(keys.node(_text(member)))
    states = pipe.execute() if members else []
    newest = newest_revision_number()
    nodes = []
    for (member, score), state in zip(members, states, strict=True):
        heartbeat_at = _moment(score) or datetime.fromtimestamp(0, tz=UTC)
        revision = _integer(state.get(b"revision"))
        silent = now - heartbeat_at
        nodes.append(
            FleetNode(
                node_id=_text(member),
                host=_text(state.get(b"host")),
                pid=_integer(state.get(b"pid")),
                revision=revision,
                config_hash=_text(state.get(b"config_hash")),
                lag=newest - revision if newest is not None and revision is not None else None,
                heartbeat_at=heartbeat_at,
                seconds_since_heartbeat=round(max(silent.total_seconds(), 0.0), 3),
                started_at=_moment(state.get(b"started_at")),
                last_error=_text(state.get(b"last_error")),
                last_rejected=_text(state.get(b"last_rejected")),
                stale=silent > STALE_AFTER,
                open_breakers=_breaker_count(state.get(b"breakers")),
            )
        )
    return sorted(nodes, key=lambda node: node.node_id)

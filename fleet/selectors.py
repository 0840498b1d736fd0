"""The gateway fleet as its heartbeats in Redis describe it, for the fleet API and pages.

Each worker writes a hash of its state and its id into a sorted set scored by the heartbeat
time (gateway/follower.py). The hash expires an hour after the last heartbeat; the id stays,
so a long-silent node is still listed, as stale, with what little is left of it.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.db.models import Count, Min
from django.utils import timezone

from .models import ConfigRevision, PendingConfigChange
from .redis_client import redis_client, redis_keys, status_client

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


@dataclass(frozen=True)
class PublishState:
    """How far the config in Redis (what gateway workers load) is behind the committed changes."""

    pending_changes: int  # committed changes no revision holds yet
    unpublished_since: datetime | None  # when the oldest change not yet in Redis was committed
    redis_revision: int | None  # None when Redis cannot be read
    newest_revision: int | None

    def age_seconds(self, now: datetime | None = None) -> float:
        if self.unpublished_since is None:
            return 0.0
        return max(0.0, ((now or timezone.now()) - self.unpublished_since).total_seconds())


def publish_state() -> PublishState:
    """Two queries and one Redis read (short timeouts: every signed-in page shows the result). A
    change is unpublished until Redis announces a revision holding it: still pending (no revision
    yet), or in a revision Redis has not received."""
    pending = PendingConfigChange.objects.aggregate(count=Count("id"), oldest=Min("created_at"))
    pending_count, oldest = pending["count"], pending["oldest"]
    newest = newest_revision_number()
    try:
        in_redis: int | None = int(status_client().get(redis_keys().latest) or 0)
    except redis.RedisError:
        in_redis = None
    if newest is not None and (in_redis is None or in_redis < newest):
        first_missing = (
            ConfigRevision.objects.filter(number__gt=in_redis or 0)
            .order_by("number")
            .values_list("created_at", flat=True)
            .first()
        )
        if first_missing is not None and (oldest is None or first_missing < oldest):
            oldest = first_missing
    return PublishState(pending_count, oldest, in_redis, newest)


def entity_publish_pending(entity_type: str, entity_id: object) -> bool:
    """Whether a committed change of this entity is still waiting for a revision."""
    return PendingConfigChange.objects.filter(entity_type=entity_type, entity_id=str(entity_id)).exists()


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

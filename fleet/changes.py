"""How service functions tell the fleet that something the gateway uses changed."""

import logging
from typing import Any

import redis
from django.db import connection, transaction
from kombu.exceptions import OperationalError as BrokerUnreachable

from .models import PendingConfigChange

log = logging.getLogger("fleet.changes")

ENTITY_TYPES = ("org", "team", "key", "credential", "deployment", "route", "budget", "policy")


def record_config_change(entity_type: str, *entity_ids, cause=None) -> None:
    """Call inside the service's transaction. On commit, a publish is enqueued; bursts of
    changes coalesce because one publish claims every pending change."""
    assert entity_type in ENTITY_TYPES, entity_type  # noqa: S101  (a programming error, not input)
    PendingConfigChange.objects.bulk_create(
        [
            PendingConfigChange(entity_type=entity_type, entity_id=str(entity_id), cause=getattr(cause, "pk", None))
            for entity_id in entity_ids
        ]
    )
    # One publish per transaction however many changes it records (Django forgets the
    # callback if the transaction rolls back).
    if not any(
        getattr(callback, "__func__", callback) is _enqueue_publish for _, callback, _ in connection.run_on_commit
    ):
        transaction.on_commit(_enqueue_publish)


def _enqueue_publish(connection: Any = None) -> None:
    """Ask a Celery worker to publish. The change is committed already: a broker that cannot be
    reached must not fail the request that made it, and the periodic sweep (the beat entry
    publish-pending, every GATEHOUSE_PUBLISH_SWEEP_SECONDS) publishes it once Redis is back.
    `connection`: the broker connection to use (default: the app's)."""
    from .tasks import publish_config

    try:
        publish_config.apply_async(retry=False, connection=connection)
    except (BrokerUnreachable, redis.RedisError, OSError) as error:
        log.warning("could not ask for a config publish (%s); the periodic sweep will publish it", error)

"""How service functions tell the fleet that something the gateway uses changed."""

from django.db import connection, transaction

from .models import PendingConfigChange

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


def _enqueue_publish() -> None:
    from .tasks import publish_config

    publish_config.delay()

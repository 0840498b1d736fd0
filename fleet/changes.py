"""How service functions tell the fleet that something the gateway uses changed."""

from django.db import transaction

from .models import PendingConfigChange

ENTITY_TYPES = ("org", "team", "key", "credential", "deployment", "route")


def record_config_change(entity_type: str, *entity_ids, cause=None) -> None:
    """Call inside the service's transaction. On commit, a publish is enqueued; bursts of
    changes coalesce because one publish claims every pending change."""
    from .tasks import publish_config

    assert entity_type in ENTITY_TYPES, entity_type  # noqa: S101  (a programming error, not input)
    PendingConfigChange.objects.bulk_create(
        [
            PendingConfigChange(entity_type=entity_type, entity_id=str(entity_id), cause=getattr(cause, "pk", None))
            for entity_id in entity_ids
        ]
    )
    transaction.on_commit(publish_config.delay)

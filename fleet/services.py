"""Building, signing and publishing config revisions.

Publishing is serialized by a PostgreSQL advisory lock and is idempotent: the revision is
committed to PostgreSQL first, then copied to Redis in one MULTI/EXEC, then announced. A
publisher killed at any point leaves either nothing or a committed revision that the next
publish copies; Redis never shows half a revision, and can always be rebuilt from here.
"""

import functools

from django.conf import settings
from django.db import connection, transaction

from gateway.config import SCHEMA_VERSION, canonical_bytes, content_hash, sign_envelope, signing_key_from_text

from .compile import compile_all, compile_entity
from .models import ConfigRevision
from .redis_client import redis_client, redis_keys

PUBLISH_LOCK = 7_301_001  # pg_advisory_xact_lock id for config publishing


@functools.cache
def _signing_key():
    return signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY)


def _lock() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PUBLISH_LOCK])


def _next_number() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('fleet_configrevision', 'number'))")
        return cursor.fetchone()[0]


def _claim_pending() -> list[tuple[str, str, int | None]]:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM fleet_pendingconfigchange RETURNING entity_type, entity_id, cause")
        return cursor.fetchall()


def _save_revision(number: int, kind: str, document: dict, *, cause_id: int | None, summary: str) -> ConfigRevision:
    payload = canonical_bytes(document)
    return ConfigRevision.objects.create(
        number=number,
        kind=kind,
        sha256=content_hash(payload),
        size=len(payload),
        cause_id=cause_id,
        summary=summary[:300],
        envelope=sign_envelope(_signing_key(), payload),
    )


def _build_full(number: int, *, cause_id: int | None, summary: str) -> ConfigRevision:
    entities: dict[str, dict[str, dict]] = {}
    for entity_type, entity_id, value in compile_all():
        entities.setdefault(entity_type, {})[entity_id] = value
    document = {"schema": SCHEMA_VERSION, "revision": number, "kind": "full", "entities": entities}
    return _save_revision(number, ConfigRevision.Kind.FULL, document, cause_id=cause_id, summary=summary)


def _summarize(changes: list[tuple[str, str, int | None]]) -> str:
    counts: dict[str, int] = {}
    for entity_type, _, _ in changes:
        counts[entity_type] = counts.get(entity_type, 0) + 1
    return ", ".join(f"{n} {entity_type}{'s' if n > 1 else ''}" for entity_type, n in sorted(counts.items()))


def publish_pending() -> ConfigRevision | None:
    """Turn every pending change into one revision (the first ever is a full snapshot)."""
    with transaction.atomic():
        _lock()
        changes = _claim_pending()
        latest = ConfigRevision.objects.order_by("-number").only("number").first()
        causes = [cause for _, _, cause in changes if cause]
        cause_id = max(causes) if causes else None
        revision = None
        if latest is None:
            revision = _build_full(_next_number(), cause_id=cause_id, summary="initial snapshot")
        elif changes:
            number = _next_number()
            touched = sorted({(entity_type, entity_id) for entity_type, entity_id, _ in changes})
            ops = [{"type": t, "id": i, "value": compile_entity(t, i)} for t, i in touched]
            document = {
                "schema": SCHEMA_VERSION,
                "revision": number,
                "kind": "delta",
                "base_revision": latest.number,
                "ops": ops,
            }
            revision = _save_revision(
                number, ConfigRevision.Kind.DELTA, document, cause_id=cause_id, summary=_summarize(changes)
            )
    sync_to_redis()
    return revision


def compact() -> ConfigRevision | None:
    """Write a fresh full snapshot if anything changed since the last one."""
    with transaction.atomic():
        _lock()
        latest = ConfigRevision.objects.order_by("-number").only("number", "kind").first()
        if latest is not None and latest.kind == ConfigRevision.Kind.FULL and not _has_pending():
            revision = None
        else:
            _claim_pending()
            revision = _build_full(_next_number(), cause_id=None, summary="compaction")
    sync_to_redis()
    return revision


def _has_pending() -> bool:
    from .models import PendingConfigChange

    return PendingConfigChange.objects.exists()


def sync_to_redis() -> int:
    """Copy to Redis every committed revision it lacks, then announce the newest. Harmless
    to run twice; after Redis lost its data it restores the newest snapshot and deltas."""
    client, keys = redis_client(), redis_keys()
    newest_full = ConfigRevision.objects.filter(kind=ConfigRevision.Kind.FULL).order_by("-number").first()
    if newest_full is None:
        return 0
    in_redis = int(client.get(keys.latest) or 0)
    start = in_redis if in_redis >= newest_full.number else newest_full.number - 1
    missing = list(ConfigRevision.objects.filter(number__gt=start).order_by("number"))
    if not missing:
        return in_redis
    pipe = client.pipeline(transaction=True)
    for revision in missing:
        if revision.kind == ConfigRevision.Kind.FULL:
            pipe.set(keys.snapshot, bytes(revision.envelope))
        else:
            pipe.zadd(keys.change_log, {bytes(revision.envelope): revision.number})
    newest = missing[-1].number
    pipe.set(keys.latest, newest)
    pipe.zremrangebyscore(keys.change_log, "-inf", newest - settings.GATEHOUSE_CONFIG_LOG_LENGTH)
    pipe.execute()
    client.publish(keys.revisions_channel, str(newest))
    return newest

"""Building, signing and publishing config revisions.

Publishing is serialized by a PostgreSQL advisory lock and is idempotent: the revision is
committed to PostgreSQL first, then copied to Redis in one MULTI/EXEC, then announced. A
publisher killed at any point leaves either nothing or a committed revision that the next
publish copies; Redis never shows half a revision, and can always be rebuilt from here.

Every document is stamped with the time it is signed, always under the publish lock, so its
`signed_at` proves its revision was the newest then: a worker starting with nothing on disk
refuses a config signed too long ago (gateway/config.py), and compaction re-signs the newest
snapshot in a quiet fleet so there always is a fresh one.
"""

import functools
import json
import time

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import BinaryField
from django.db.models.functions import Greatest, Length, Substr
from django.utils import timezone

from gateway.config import (
    ENVELOPE_MAGIC,
    SCHEMA_VERSION,
    canonical_bytes,
    content_hash,
    envelope_payload,
    peek_signed_at,
    sign_envelope,
    signing_key_from_text,
)

from .compile import compile_all, compile_entity
from .models import ConfigRevision, ConfigSnapshot
from .redis_client import redis_client, redis_keys

PUBLISH_LOCK = 7_301_001  # pg_advisory_xact_lock id for config publishing
SNAPSHOTS_KEPT = 12  # compaction snapshots kept in PostgreSQL: an hour of 5-minute compactions
# An envelope's first bytes are its magic and Ed25519 signature (88 characters of base64): two
# envelopes with the same first bytes are the same envelope, whatever their size.
ENVELOPE_HEAD = len(ENVELOPE_MAGIC) + 88
SIGNED_AT_TAIL = 64  # its last bytes hold its signed_at (gateway.config.peek_signed_at)


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


def _sign(document: dict) -> tuple[bytes, bytes]:
    """(payload, envelope) of `document` stamped with the time it is signed. Call under the
    publish lock only, so the stamp proves the revision was the newest then."""
    payload = canonical_bytes({**document, "signed_at": int(time.time())})
    return payload, sign_envelope(_signing_key(), payload)


def _save_revision(number: int, kind: str, document: dict, *, cause_id: int | None, summary: str) -> ConfigRevision:
    payload, envelope = _sign(document)
    return ConfigRevision.objects.create(
        number=number,
        kind=kind,
        sha256=content_hash(payload),
        size=len(payload),
        cause_id=cause_id,
        summary=summary[:300],
        envelope=envelope,
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


def compact() -> ConfigSnapshot | None:
    """Write a full snapshot of the newest revision's content when deltas followed the last
    snapshot, or when the newest snapshot was signed GATEHOUSE_SNAPSHOT_REFRESH_SECONDS ago
    (then it is re-signed in place, even for a full revision). The snapshot keeps the
    revision's number (it adds no revision), so workers that already run it load nothing; a
    starting worker or a rebuilt Redis begins from it rather than replaying every delta, and
    finds it fresh enough to start from. Replaying rather than recompiling keeps a rollback in
    force until the rolled-back entities change again."""
    with transaction.atomic():
        _lock()
        latest = ConfigRevision.objects.order_by("-number").only("number", "kind", "sha256").first()
        snapshot = None
        if latest is not None and _snapshot_wanted(latest.number):
            document = {
                "schema": SCHEMA_VERSION,
                "revision": latest.number,
                "kind": "full",
                "entities": revision_entities(latest.number),
                "revision_sha256": latest.sha256,
            }
            payload, envelope = _sign(document)
            snapshot, _ = ConfigSnapshot.objects.update_or_create(
                number=latest.number,
                defaults={
                    "sha256": content_hash(payload),
                    "size": len(payload),
                    "envelope": envelope,
                    "created_at": timezone.now(),
                },
            )
            # A snapshot is only a shortcut (full revisions and deltas rebuild any revision), and
            # at 100k keys each is about 30 MB: keep the newest few, not one every 5 minutes forever.
            kept = ConfigSnapshot.objects.order_by("-number").values_list("number", flat=True)[:SNAPSHOTS_KEPT]
            ConfigSnapshot.objects.exclude(number__in=list(kept)).delete()
    sync_to_redis()
    return snapshot


def _snapshot_wanted(newest: int) -> bool:
    """Whether the newest revision has no snapshot yet, or one signed long enough ago to
    re-sign (one signed before signing times were recorded counts as signed at 0)."""
    if _newest_snapshot_number() < newest:
        return True
    signed_at = peek_signed_at(_snapshot_slice(newest, Greatest(Length("envelope") - SIGNED_AT_TAIL + 1, 1)))
    return time.time() - signed_at >= settings.GATEHOUSE_SNAPSHOT_REFRESH_SECONDS


def republish_all(*, actor, reason: str = "") -> ConfigRevision:
    """Recompile everything from PostgreSQL into a full snapshot (the source of truth wins)."""
    from audit.services import record_event

    with transaction.atomic():
        _lock()
        _claim_pending()
        number = _next_number()
        event = record_event(
            actor=actor,
            org=None,
            action="fleet.republished",
            target_type="config_revision",
            target_id=str(number),
            diff={"reason": {"after": reason[:300]}},
        )
        revision = _build_full(number, cause_id=event.pk, summary="republished from the database")
    sync_to_redis()
    return revision


def roll_back_to(*, actor, number: int) -> ConfigRevision:
    """Publish a new revision with revision `number`'s content. Caller keys keep their
    current state: a rollback never brings a revoked key back. The rollback holds until an
    entity it restored changes again in the portal."""
    from django.core.exceptions import ValidationError

    from audit.services import record_event

    with transaction.atomic():
        _lock()
        latest = ConfigRevision.objects.order_by("-number").only("number").first()
        if latest is None or not ConfigRevision.objects.filter(number=number).exists():
            raise ValidationError({"revision": [f"There is no revision {number}."]})
        if number == latest.number:
            raise ValidationError({"revision": [f"Revision {number} is the one running."]})
        target = revision_entities(number)
        current = revision_entities(latest.number)
        target["key"] = current.get("key", {})
        new_number = _next_number()
        event = record_event(
            actor=actor,
            org=None,
            action="fleet.rolled_back",
            target_type="config_revision",
            target_id=str(new_number),
            diff={"content_of": {"after": number}, "replaces": {"before": latest.number}},
        )
        document = {"schema": SCHEMA_VERSION, "revision": new_number, "kind": "full", "entities": target}
        revision = _save_revision(
            new_number, ConfigRevision.Kind.FULL, document, cause_id=event.pk, summary=f"rollback to revision {number}"
        )
    sync_to_redis()
    return revision


def revision_document(revision: ConfigRevision) -> dict:
    return json.loads(envelope_payload(bytes(revision.envelope)))


def _newest_snapshot_number(at_most: int | None = None) -> int:
    """The newest revision with a full snapshot (a full revision, or a compaction of a delta)."""
    revisions = ConfigRevision.objects.filter(kind=ConfigRevision.Kind.FULL)
    snapshots = ConfigSnapshot.objects.all()
    if at_most is not None:
        revisions, snapshots = revisions.filter(number__lte=at_most), snapshots.filter(number__lte=at_most)
    full = revisions.order_by("-number").values_list("number", flat=True).first()
    compacted = snapshots.order_by("-number").values_list("number", flat=True).first()
    return max(full or 0, compacted or 0)


def _snapshot_envelope(number: int) -> bytes:
    compacted = ConfigSnapshot.objects.filter(number=number).values_list("envelope", flat=True).first()
    if compacted is not None:
        return bytes(compacted)
    return bytes(
        ConfigRevision.objects.values_list("envelope", flat=True).get(number=number, kind=ConfigRevision.Kind.FULL)
    )


def _snapshot_slice(number: int, start, length: int | None = None) -> bytes:
    """Bytes of the envelope _snapshot_envelope(number) returns, from `start` (1-based, may
    be an expression), without reading 30 MB out of PostgreSQL."""
    part = Substr("envelope", start, length, output_field=BinaryField())
    compacted = ConfigSnapshot.objects.filter(number=number)
    full = ConfigRevision.objects.filter(number=number, kind=ConfigRevision.Kind.FULL)
    for candidates in (compacted, full):
        found = candidates.annotate(part=part).values_list("part", flat=True).first()
        if found is not None:
            return bytes(found)
    return b""


def revision_entities(number: int) -> dict[str, dict[str, dict]]:
    """The whole config as of revision `number`: the newest snapshot at or before it, plus
    the deltas after that snapshot up to it."""
    base = _newest_snapshot_number(number)
    if not base:
        return {}
    document = json.loads(envelope_payload(_snapshot_envelope(base)))
    entities = {t: dict(items) for t, items in document["entities"].items()}
    deltas = ConfigRevision.objects.filter(kind=ConfigRevision.Kind.DELTA, number__gt=base, number__lte=number)
    for delta in deltas.order_by("number").iterator(chunk_size=100):
        for op in revision_document(delta)["ops"]:
            items = entities.setdefault(op["type"], {})
            if op["value"] is None:
                items.pop(op["id"], None)
            else:
                items[op["id"]] = op["value"]
    return entities


def diff_revisions(older: int, newer: int) -> list[dict]:
    """Entities that differ between two revisions: type, id, before and after (None: absent).
    Sealed provider secrets are shown only as changed or not."""
    before, after = revision_entities(older), revision_entities(newer)
    rows = []
    for entity_type in sorted(set(before) | set(after)):
        old_items, new_items = before.get(entity_type, {}), after.get(entity_type, {})
        for entity_id in sorted(set(old_items) | set(new_items)):
            old, new = old_items.get(entity_id), new_items.get(entity_id)
            if old != new:
                rows.append({"type": entity_type, "id": entity_id, "before": _readable(old), "after": _readable(new)})
    return rows


def _readable(value: dict | None) -> dict | None:
    if value is None or "sealed_api_key" not in value:
        return value
    return {**value, "sealed_api_key": "(sealed) " + content_hash(value["sealed_api_key"].encode())[:12]}


def sync_to_redis() -> int:
    """Copy to Redis every committed revision it lacks, then announce the newest. Harmless
    to run twice; after Redis lost its data it restores the newest snapshot and deltas.

    It never moves Redis backwards: the write is a transaction under WATCH of what it read,
    so a sync that read older state than another one finishing first starts over instead of
    putting back an older snapshot or revision number. A snapshot re-signed under the same
    number (compaction) is told apart by its signature, and copied too: running workers
    ignore it (nothing newer to load), starting workers find it fresh."""
    client, keys = redis_client(), redis_keys()
    newest = ConfigRevision.objects.order_by("-number").values_list("number", flat=True).first()
    snapshot_number = _newest_snapshot_number()
    if newest is None or not snapshot_number:
        return 0
    oldest_kept = newest - settings.GATEHOUSE_CONFIG_LOG_LENGTH + 1
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.latest, keys.snapshot_revision, keys.snapshot)
                # GET each, not MGET: a Cluster's pipeline refuses multi-key reads while watching.
                in_redis, snapshot_in_redis = (
                    int(pipe.get(name) or 0) for name in (keys.latest, keys.snapshot_revision)
                )
                deltas = ConfigRevision.objects.filter(
                    kind=ConfigRevision.Kind.DELTA, number__gt=max(in_redis, oldest_kept - 1)
                ).order_by("number")
                missing = {bytes(envelope): number for number, envelope in deltas.values_list("number", "envelope")}
                stale_snapshot = snapshot_in_redis < snapshot_number or (
                    snapshot_in_redis == snapshot_number
                    and pipe.getrange(keys.snapshot, 0, ENVELOPE_HEAD - 1)
                    != _snapshot_slice(snapshot_number, 1, ENVELOPE_HEAD)
                )
                if not missing and not stale_snapshot and in_redis >= newest:
                    return in_redis
                pipe.multi()
                if stale_snapshot:
                    pipe.set(keys.snapshot, _snapshot_envelope(snapshot_number))
                    pipe.set(keys.snapshot_revision, snapshot_number)
                if missing:
                    pipe.zadd(keys.change_log, missing)
                if newest > in_redis:
                    pipe.set(keys.latest, newest)
                pipe.zremrangebyscore(keys.change_log, "-inf", oldest_kept - 1)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    client.publish(keys.revisions_channel, str(newest))
    return max(newest, in_redis)


FORGET_NODES_AFTER_SECONDS = 86_400


def forget_silent_nodes() -> int:
    """Drop workers that have not sent a heartbeat for a day from the fleet list."""
    import time

    client, keys = redis_client(), redis_keys()
    return client.zremrangebyscore(keys.nodes, "-inf", time.time() - FORGET_NODES_AFTER_SECONDS)

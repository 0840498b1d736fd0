"""Writing and verifying the audit trail.

`record_event` is called by every service function inside its transaction, so a change and
its event commit together or not at all (DESIGN.md promise 4). Signed checkpoints, and how
verification uses them to name a rewritten event, are in audit/integrity.py.
"""

import bisect
import hashlib
import itertools
import json
import logging
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from .context import Actor, request_meta
from .models import GENESIS_HASH, AuditChainHead, AuditEvent

PLATFORM_CHAIN = "platform"
REDACTED = "***"

log = logging.getLogger("audit.services")


def redact_secret(value: str | None) -> str:
    """How a secret appears in an audit diff: its last four characters at most."""
    if not value:
        return ""
    return f"{REDACTED}{value[-4:]}" if len(value) >= 12 else REDACTED


def changes(before: Mapping[str, Any], after: Mapping[str, Any], *, secret_fields: Iterable[str] = ()) -> dict:
    """A before/after diff of the fields that differ, with secret fields redacted."""
    secrets = set(secret_fields)
    diff: dict[str, dict[str, Any]] = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name in secrets:
            old, new = redact_secret(old), redact_secret(new)
        diff[name] = {"before": _jsonable(old), "after": _jsonable(new)}
    return diff


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in (sorted(value) if isinstance(value, set | frozenset) else value)]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


def canonical_encoding(event: AuditEvent) -> bytes:
    """The exact bytes an event's hash covers. Changing this breaks every existing chain."""
    payload = {
        "org": str(event.org_id) if event.org_id else None,
        "sequence": event.sequence,
        "action": event.action,
        "actor": [event.actor_type, event.actor_id, event.actor_label],
        "target": [event.target_type, event.target_id, event.target_label],
        "diff": event.diff,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "created_at": event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "uuid": str(event.uuid),
        "prev_hash": event.prev_hash,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(canonical_encoding(event)).hexdigest()


def record_event(
    *,
    actor: Actor,
    org,
    action: str,
    target=None,
    target_type: str = "",
    target_id: str = "",
    target_label: str = "",
    diff: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the org's chain (or the platform chain when org is None)."""
    if target is not None:
        target_type = target_type or target._meta.label_lower.split(".")[-1]
        target_id = target_id or str(target.pk)
        target_label = target_label or str(target)[:254]
    meta = request_meta.get()
    chain = str(org.pk) if org is not None else PLATFORM_CHAIN
    with transaction.atomic():
        AuditChainHead.objects.bulk_create([AuditChainHead(chain=chain)], ignore_conflicts=True)
        head = AuditChainHead.objects.select_for_update().get(chain=chain)
        event = AuditEvent(
            org=org,
            sequence=head.sequence + 1,
            action=action,
            actor_type=actor.kind,
            actor_id=actor.id,
            actor_label=actor.label[:254],
            target_type=target_type,
            target_id=target_id,
            target_label=target_label[:254],
            diff=_jsonable(dict(diff or {})),
            ip=meta.ip,
            user_agent=meta.user_agent,
            request_id=meta.request_id,
            created_at=timezone.now(),
            prev_hash=head.hash,
        )
        event.hash = event_hash(event)
        event.save(force_insert=True)
        head.sequence, head.hash = event.sequence, event.hash
        head.save(update_fields=["sequence", "hash"])
        # Every Nth event of an org asks for a checkpoint at once rather than at the next beat:
        # one modulo, no query (audit/integrity.py).
        if org is not None and event.sequence % max(1, settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS) == 0:
            transaction.on_commit(partial(_request_checkpoint, str(org.pk)))
    return event


def _request_checkpoint(org_id: str) -> None:
    """Ask a Celery worker to sign the org's chain head. The events are committed already: an
    unreachable broker must not fail the request that wrote them, and the beat entry
    sign-audit-checkpoints signs the head at its next run."""
    from .tasks import sign_org_checkpoint  # tasks import integrity, which imports this module

    try:
        sign_org_checkpoint.apply_async(args=(org_id,), retry=False)
    except (BrokerUnreachable, redis.RedisError, OSError) as error:
        log.warning("could not ask for an audit checkpoint (%s); the periodic one will sign it", error)


@dataclass(frozen=True)
class VerificationResult:
    ok: bool
    checked: int
    first_bad_sequence: int | None = None
    reason: str = ""
    purge: str = ""  # "N events up to sequence S were purged on DATE under retention", when so
    # What signatures cover: the newest signed checkpoint's sequence, how many events came after
    # it (a rewrite of those is undetectable until the next checkpoint), and when the first came.
    covered_through: int = 0
    uncovered: int = 0
    uncovered_since: datetime | None = None

    @property
    def coverage(self) -> str:
        """One sentence on what no signature covers yet."""
        if not self.uncovered:
            return "Every event is covered by a signed checkpoint."
        since = f", the oldest recorded at {self.uncovered_since:%Y-%m-%d %H:%M:%S} UTC" if self.uncovered_since else ""
        events, are = (f"{self.uncovered} events", "are") if self.uncovered != 1 else ("1 event", "is")
        if not self.covered_through:
            return f"{events} {are} not covered by a signature yet: there is no checkpoint{since}."
        return (
            f"{events} after the newest checkpoint (sequence {self.covered_through}) "
            f"{are} not covered by a signature yet{since}."
        )


# The columns canonical_encoding reads, in the order _encode_row takes them. `diff` comes as text
# so the common empty diff skips a parse; `created_at` as the UTC text isoformat() would give.
_VERIFY_COLUMNS = (
    "sequence, action, actor_type, actor_id, actor_label, target_type, target_id, target_label, "
    "diff::text, ip, user_agent, request_id, "
    """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), uuid::text, prev_hash, hash"""
)
_VERIFY_PAGE = 20_000
_quote = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) does to a str


def _encode_row(org_text: str, row) -> bytes:
    """canonical_encoding of one row of _VERIFY_COLUMNS, built without a model or a dict: the
    same bytes (tests compare them for real events), several times faster."""
    (sequence, action, a_type, a_id, a_label, t_type, t_id, t_label, diff, ip, agent, request_id, at, uid, prev, _) = (
        row
    )
    if diff != "{}":
        diff = json.dumps(json.loads(diff), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (
        f'{{"action":{_quote(action)},"actor":[{_quote(a_type)},{_quote(a_id)},{_quote(a_label)}],'
        f'"created_at":"{at}","diff":{diff},'
        f'"ip":{"null" if ip is None else _quote(ip)},"org":{org_text},"prev_hash":{_quote(prev)},'
        f'"request_id":{_quote(request_id)},"sequence":{sequence},'
        f'"target":[{_quote(t_type)},{_quote(t_id)},{_quote(t_label)}],"user_agent":{_quote(agent)},'
        f'"uuid":"{uid}"}}'
    ).encode()


def verify_chain(org) -> VerificationResult:
    """Walk one org's chain in sequence order and report the first broken link or gap.

    After a retention purge the walk starts at the newest signed purge checkpoint: the first event
    must follow its sequence and link to its hash. Every signed checkpoint must verify and the
    chain must pass through its (sequence, hash). A break inside a stretch whose event hashes a
    checkpoint signed is reported at the first event whose hash is not the signed one: the event
    that was rewritten, though its hash and those after it were recomputed (audit/integrity.py).
    The result also says how many events after the newest checkpoint no signature covers yet."""
    from .integrity import checkpoint_signature_valid  # integrity imports this module
    from .models import AuditCheckpoint

    chain = str(org.pk) if org is not None else PLATFORM_CHAIN
    head = AuditChainHead.objects.filter(chain=chain).values_list("sequence", "hash").first()
    if head is None:
        return VerificationResult(True, 0)
    head_sequence, head_hash = head
    expected_sequence, expected_prev, purge_note = 1, GENESIS_HASH, ""
    # The signed (sequence, hash) pairs the walk must pass through, ascending: compact, since a
    # checkpoint a minute makes many (a checkpoint's event hashes are read only when a break
    # needs them, by _first_rewritten).
    boundaries, boundary_hashes = array("q"), bytearray()
    covered_through, invalid, signed_beyond = 0, None, None
    if org is not None:
        purges = list(AuditCheckpoint.objects.filter(org=org, kind=AuditCheckpoint.PURGE).order_by("sequence"))
        if purges:
            newest_purge = purges[-1]
            expected_sequence, expected_prev = newest_purge.sequence + 1, newest_purge.hash
            purge_note = (
                f"{sum(c.purged_count for c in purges)} events up to sequence {newest_purge.sequence} were purged "
                f"on {newest_purge.created_at:%Y-%m-%d} under retention"
            )
        # Periodic checkpoints before the newest purge cover nothing left to walk.
        periodic = (
            AuditCheckpoint.objects.filter(org=org, kind=AuditCheckpoint.PERIODIC, sequence__gte=expected_sequence)
            .defer("event_hashes")
            .order_by("sequence", "created_at")
            .iterator(chunk_size=2000)
        )
        for checkpoint in itertools.chain(purges, periodic):
            if not checkpoint_signature_valid(checkpoint):
                invalid = invalid or checkpoint
                continue
            covered_through = max(covered_through, checkpoint.sequence)
            if checkpoint.sequence > head_sequence:
                signed_beyond = checkpoint  # streamed in sequence order: the newest wins
            elif checkpoint.sequence >= expected_sequence:
                try:
                    boundary_hashes += bytes.fromhex(checkpoint.hash)
                except ValueError:
                    boundary_hashes += bytes(32)  # signed, yet not a hash: no chain passes through it
                boundaries.append(checkpoint.sequence)
    coverage = coverage_after(org, covered_through, head_sequence)
    if invalid is not None:
        return VerificationResult(
            False,
            0,
            invalid.sequence,
            f"the {invalid.kind} checkpoint at sequence {invalid.sequence} has an invalid signature",
            **coverage,
        )

    def broken(sequence: int, reason: str, *, at_checkpoint: bool = False) -> VerificationResult:
        """The break at `sequence`, or at the rewritten event before it that a checkpoint names."""
        located = _first_rewritten(org, sequence) if org is not None else None
        if located is not None and (located[0] < sequence or at_checkpoint):
            rewritten, holder = located
            reason = (
                f"its hash is not the one signed with the checkpoint of {holder.created_at:%Y-%m-%d %H:%M:%S} UTC "
                f"(sequence {holder.sequence}): the event was changed and the hashes after it recomputed"
                + ("" if rewritten == sequence else f" (the chain breaks at sequence {sequence}: {reason})")
            )
            before = checked - (sequence - rewritten)
            return VerificationResult(False, before, rewritten, reason, purge_note, **coverage)
        if at_checkpoint:
            # A checkpoint without event hashes (signed before they were kept) bounds the stretch only.
            index = bisect.bisect_left(boundaries, sequence)
            earlier = boundaries[index - 1] if index else expected_start - 1
            signed_on = (
                AuditCheckpoint.objects.filter(org=org, sequence=sequence)
                .order_by("created_at")
                .values_list("created_at", flat=True)
                .first()
            )
            reason = (
                f"does not match the checkpoint signed on {signed_on:%Y-%m-%d}: an event from "
                f"sequence {earlier + 1} to {sequence} was changed and the hashes after it recomputed"
            )
        return VerificationResult(False, checked, sequence, reason, purge_note, **coverage)

    org_text = _quote(str(org.pk)) if org is not None else "null"
    where = "org_id = %s" if org is not None else "org_id IS NULL"
    params = [org.pk] if org is not None else []
    checked, expected_start, next_boundary = 0, expected_sequence, 0
    next_at = boundaries[0] if boundaries else head_sequence + 1
    sha256 = hashlib.sha256
    # Keyset pages on (org, sequence): constant memory, and each page is one index range scan.
    with connection.cursor() as cursor:
        while expected_sequence <= head_sequence:
            cursor.execute(
                f"SELECT {_VERIFY_COLUMNS} FROM audit_auditevent WHERE {where} AND sequence >= %s "  # noqa: S608
                "AND sequence <= %s ORDER BY sequence LIMIT %s",
                [*params, expected_sequence, head_sequence, _VERIFY_PAGE],
            )
            rows = cursor.fetchall()
            if not rows:
                break
            for row in rows:
                sequence, stored_hash, prev = row[0], row[15], row[14]
                if sequence != expected_sequence:
                    return broken(expected_sequence, f"sequence {expected_sequence} is missing (next is {sequence})")
                if prev != expected_prev:
                    return broken(sequence, "prev_hash does not match the previous event")
                if sha256(_encode_row(org_text, row)).hexdigest() != stored_hash:
                    return broken(sequence, "content does not match its hash")
                if sequence >= next_at:  # one comparison per event; the rest only at checkpoints
                    while next_boundary < len(boundaries) and boundaries[next_boundary] <= sequence:
                        signed_hash = boundary_hashes[next_boundary * 32 : next_boundary * 32 + 32]
                        if boundaries[next_boundary] == sequence and signed_hash.hex() != stored_hash:
                            return broken(sequence, "does not match its checkpoint", at_checkpoint=True)
                        next_boundary += 1
                    next_at = boundaries[next_boundary] if next_boundary < len(boundaries) else head_sequence + 1
                checked += 1
                expected_sequence, expected_prev = sequence + 1, stored_hash
    if expected_sequence - 1 != head_sequence:
        return broken(expected_sequence, f"chain head says {head_sequence} events, found {expected_sequence - 1}")
    if expected_prev != head_hash:
        # The newest event was rewritten with a recomputed hash: the head still holds the original.
        return broken(head_sequence, "the newest event does not match the chain head")
    events = AuditEvent.objects.filter(org=org) if org is not None else AuditEvent.objects.filter(org__isnull=True)
    beyond = events.filter(sequence__gt=head_sequence).order_by("sequence").values_list("sequence", flat=True).first()
    if beyond is not None or signed_beyond is not None:
        current = AuditChainHead.objects.filter(chain=chain).values_list("sequence", flat=True).first() or 0
        if beyond is not None and beyond > current:  # not an event appended since the walk began
            return broken(beyond, f"event {beyond} is beyond the chain head ({current})")
        if signed_beyond is not None and signed_beyond.sequence > current:
            # Events removed from the end, the chain head set back to match: only a signature knows.
            return broken(
                current + 1,
                f"sequence {current + 1} is missing: the checkpoint signed on {signed_beyond.created_at:%Y-%m-%d} "
                f"covers events up to sequence {signed_beyond.sequence}, the chain ends at {current}",
            )
    return VerificationResult(True, checked, purge=purge_note, **coverage)


def coverage_after(org, covered_through: int, head_sequence: int) -> dict[str, Any]:
    """VerificationResult's coverage fields: the events after `covered_through` (the newest
    checkpoint's sequence) up to the chain head, and when the first of them was recorded."""
    uncovered = max(0, head_sequence - covered_through)
    since = None
    if uncovered:
        events = AuditEvent.objects.filter(org=org) if org is not None else AuditEvent.objects.filter(org__isnull=True)
        since = (
            events.filter(sequence__gt=covered_through, sequence__lte=head_sequence)
            .order_by("sequence")
            .values_list("created_at", flat=True)
            .first()
        )
    return {"covered_through": covered_through, "uncovered": uncovered, "uncovered_since": since}


def _first_rewritten(org, sequence: int):
    """(The first event, up to `sequence`, of the signed stretch holding it whose stored hash is
    not the one signed; that stretch's checkpoint), or None: no such stretch, or no such event.

    Events the walk passed before `sequence` link up and match their content, so the first whose
    hash differs from the signed one holds the change; each after it differs only by its link."""
    from .integrity import HASH_BYTES, hashes_signature_valid
    from .models import AuditCheckpoint

    holders = AuditCheckpoint.objects.filter(
        org=org, first_sequence__lte=sequence, sequence__gte=sequence, kind=AuditCheckpoint.PERIODIC
    ).exclude(hashes_signature="")
    for checkpoint in holders.order_by("sequence", "created_at"):
        if not hashes_signature_valid(checkpoint):
            continue  # a forged list names nothing; the break stays where the walk found it
        signed_hashes = bytes(checkpoint.event_hashes)
        first = checkpoint.first_sequence or 0
        stored = (
            AuditEvent.objects.filter(org=org, sequence__gte=first, sequence__lte=sequence)
            .order_by("sequence")
            .values_list("sequence", "hash")
        )
        for event_sequence, event_hash_text in stored:
            offset = (event_sequence - first) * HASH_BYTES
            if event_hash_text[: 2 * HASH_BYTES] != signed_hashes[offset : offset + HASH_BYTES].hex():
                return event_sequence, checkpoint
        return None
    return None

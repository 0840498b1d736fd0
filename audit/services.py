"""Writing and verifying the audit trail.

`record_event` is called by every service function inside its transaction, so a change and
its event commit together or not at all (DESIGN.md promise 4).
"""

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from .context import Actor, request_meta
from .models import GENESIS_HASH, AuditChainHead, AuditEvent

PLATFORM_CHAIN = "platform"
REDACTED = "***"


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
    return event


@dataclass(frozen=True)
class VerificationResult:
    ok: bool
    checked: int
    first_bad_sequence: int | None = None
    reason: str = ""
    purge: str = ""  # "N events up to sequence S were purged on DATE under retention", when so


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
    chain must pass through its (sequence, hash)."""
    from .integrity import checkpoint_signature_valid  # integrity imports this module
    from .models import AuditCheckpoint

    chain = str(org.pk) if org is not None else PLATFORM_CHAIN
    head = AuditChainHead.objects.filter(chain=chain).values_list("sequence", "hash").first()
    if head is None:
        return VerificationResult(True, 0)
    head_sequence, head_hash = head
    expected_sequence, expected_prev, purge_note = 1, GENESIS_HASH, ""
    signed: dict[int, AuditCheckpoint] = {}
    if org is not None:
        checkpoints = list(AuditCheckpoint.objects.filter(org=org, sequence__lte=head_sequence))
        for checkpoint in checkpoints:
            if not checkpoint_signature_valid(checkpoint):
                return VerificationResult(
                    False,
                    0,
                    checkpoint.sequence,
                    f"the {checkpoint.kind} checkpoint at sequence {checkpoint.sequence} has an invalid signature",
                )
        purges = [c for c in checkpoints if c.kind == AuditCheckpoint.PURGE]
        if purges:
            newest = max(purges, key=lambda c: c.sequence)
            expected_sequence, expected_prev = newest.sequence + 1, newest.hash
            purge_note = (
                f"{sum(c.purged_count for c in purges)} events up to sequence {newest.sequence} were purged "
                f"on {newest.created_at:%Y-%m-%d} under retention"
            )
        signed = {c.sequence: c for c in checkpoints if c.sequence >= expected_sequence}

    def broken(sequence: int, reason: str) -> VerificationResult:
        return VerificationResult(False, checked, sequence, reason, purge_note)

    org_text = _quote(str(org.pk)) if org is not None else "null"
    where = "org_id = %s" if org is not None else "org_id IS NULL"
    params = [org.pk] if org is not None else []
    checked = 0
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
                if sequence in signed and signed[sequence].hash != stored_hash:
                    return broken(
                        sequence, f"does not match the checkpoint signed on {signed[sequence].created_at:%Y-%m-%d}"
                    )
                checked += 1
                expected_sequence, expected_prev = sequence + 1, stored_hash
    if expected_sequence - 1 != head_sequence:
        return broken(expected_sequence, f"chain head says {head_sequence} events, found {expected_sequence - 1}")
    if expected_prev != head_hash:
        # The newest event was rewritten with a recomputed hash: the head still holds the original.
        return broken(head_sequence, "the newest event does not match the chain head")
    events = AuditEvent.objects.filter(org=org) if org is not None else AuditEvent.objects.filter(org__isnull=True)
    beyond = events.filter(sequence__gt=head_sequence).order_by("sequence").values_list("sequence", flat=True).first()
    if beyond is not None:
        current = AuditChainHead.objects.filter(chain=chain).values_list("sequence", flat=True).first() or 0
        if beyond > current:  # not an event appended since the walk began
            return broken(beyond, f"event {beyond} is beyond the chain head ({current})")
    return VerificationResult(True, checked, purge=purge_note)

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

from django.db import transaction
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


def verify_chain(org) -> VerificationResult:
    """Walk one org's chain in sequence order and report the first broken link or gap."""
    events = AuditEvent.objects.filter(org=org).order_by("sequence")
    expected_sequence, expected_prev = 1, GENESIS_HASH
    checked = 0
    for event in events.iterator(chunk_size=2000):
        if event.sequence != expected_sequence:
            return VerificationResult(
                False, checked, expected_sequence, f"sequence {expected_sequence} is missing (next is {event.sequence})"
            )
        if event.prev_hash != expected_prev:
            return VerificationResult(False, checked, event.sequence, "prev_hash does not match the previous event")
        if event_hash(event) != event.hash:
            return VerificationResult(False, checked, event.sequence, "content does not match its hash")
        checked += 1
        expected_sequence, expected_prev = event.sequence + 1, event.hash
    head = AuditChainHead.objects.filter(chain=str(org.pk) if org is not None else PLATFORM_CHAIN).first()
    if head is not None and head.sequence != checked:
        return VerificationResult(
            False, checked, checked + 1, f"chain head says {head.sequence} events, found {checked}"
        )
    if head is not None and checked and head.hash != expected_prev:
        # The newest event was rewritten with a recomputed hash: the head still holds the original.
        return VerificationResult(False, checked, checked, "the newest event does not match the chain head")
    return VerificationResult(True, checked)

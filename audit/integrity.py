"""Signed checkpoints, the retention purge and recorded verification of the audit chain.

A checkpoint is the control plane's Ed25519 signature (GATEHOUSE_SIGNING_KEY) over an org's chain
head at a time, so an auditor holding only an export and the public key can tell that the chain
they were given is the one the control plane had. A `purge` checkpoint is written before events
leave under retention, so verification starts after it instead of failing at sequence 1.
"""

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from gateway.config import public_key_text, signing_key_from_text

from .context import Actor
from .models import AuditChainHead, AuditCheckpoint, AuditEvent
from .services import VerificationResult, record_event, verify_chain

# Domain separation: a checkpoint signature can never be replayed as a config revision's.
CHECKPOINT_PREFIX = b"gatehouse-audit-checkpoint-v1\n"
PURGE_SETTING = "gatehouse.audit_purge"
RETENTION_ACTOR = Actor.system("audit retention")
CHECKPOINT_ACTOR = Actor.system("audit checkpoints")


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def checkpoint_document(checkpoint: AuditCheckpoint) -> dict:
    """The fields a checkpoint's signature covers (and an export's checkpoint line carries)."""
    return {
        "org": str(checkpoint.org_id),
        "sequence": checkpoint.sequence,
        "hash": checkpoint.hash,
        "time": _utc_text(checkpoint.created_at),
        "kind": checkpoint.kind,
        "purged_through": checkpoint.purged_through_sequence,
        "purged_count": checkpoint.purged_count,
    }


def checkpoint_payload(document: dict) -> bytes:
    """The exact bytes signed: the prefix, then the document as sorted, compact UTF-8 JSON."""
    fields = {name: document[name] for name in CHECKPOINT_FIELDS}
    return CHECKPOINT_PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


CHECKPOINT_FIELDS = ("org", "sequence", "hash", "time", "kind", "purged_through", "purged_count")


@cache
def _signing_key(text: str) -> Ed25519PrivateKey:
    return signing_key_from_text(text)


def signing_key() -> Ed25519PrivateKey:
    return _signing_key(settings.GATEHOUSE_SIGNING_KEY)


def verify_key() -> Ed25519PublicKey:
    return signing_key().public_key()


def signing_public_key_text() -> str:
    """GATEHOUSE_SIGNING_PUBLIC_KEY, the key an auditor passes to scripts/verify_audit_export.py."""
    return public_key_text(signing_key())


def checkpoint_signature_valid(checkpoint: AuditCheckpoint, public: Ed25519PublicKey | None = None) -> bool:
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        (public or verify_key()).verify(signature, checkpoint_payload(checkpoint_document(checkpoint)))
    except (InvalidSignature, ValueError):
        return False
    return True


def _signed_checkpoint(**fields) -> AuditCheckpoint:
    checkpoint = AuditCheckpoint(created_at=timezone.now(), **fields)
    payload = checkpoint_payload(checkpoint_document(checkpoint))
    checkpoint.signature = base64.b64encode(signing_key().sign(payload)).decode()
    checkpoint.save(force_insert=True)
    return checkpoint


def sign_checkpoint(*, org) -> AuditCheckpoint | None:
    """Sign the org's chain head if it moved since the last checkpoint; None if it did not."""
    with transaction.atomic():
        head = AuditChainHead.objects.select_for_update().filter(chain=str(org.pk)).first()
        if head is None or head.sequence == 0:
            return None
        last = AuditCheckpoint.objects.filter(org=org).order_by("-sequence", "-created_at").first()
        if last is not None and last.sequence >= head.sequence:
            return None
        return _signed_checkpoint(org=org, sequence=head.sequence, hash=head.hash, kind=AuditCheckpoint.PERIODIC)


def sign_all_checkpoints() -> int:
    """sign_checkpoint for every org whose chain moved; how many checkpoints were signed."""
    from orgs.models import Organization

    chains = AuditChainHead.objects.exclude(chain="platform").values_list("chain", flat=True)
    return sum(sign_checkpoint(org=org) is not None for org in Organization.objects.filter(pk__in=list(chains)))


@dataclass(frozen=True)
class PurgeResult:
    checkpoint: AuditCheckpoint
    purged_count: int
    purged_through: int


class PurgeRefused(Exception):
    """The events due for removal do not verify: purging them would hide the tampering."""


def purge_expired(org, now: datetime | None = None, *, actor: Actor = RETENTION_ACTOR) -> PurgeResult | None:
    """Remove the org's events older than its retention, after signing a `purge` checkpoint."""
    cutoff = (now or timezone.now()) - timedelta(days=org.audit_retention_days)
    with transaction.atomic():
        head = AuditChainHead.objects.select_for_update().filter(chain=str(org.pk)).first()
        if head is None:
            return None
        events = AuditEvent.objects.filter(org=org)
        first_kept = events.filter(created_at__gte=cutoff).order_by("sequence").values_list("sequence", flat=True)
        first_kept_sequence = first_kept.first()
        through = (first_kept_sequence - 1) if first_kept_sequence is not None else head.sequence
        already = (
            AuditCheckpoint.objects.filter(org=org, kind=AuditCheckpoint.PURGE)
            .order_by("-sequence")
            .values_list("sequence", flat=True)
            .first()
            or 0
        )
        if through <= already:
            return None
        # Never launder tampering: what is about to go must verify first.
        result = verify_chain(org)
        if not result.ok and (result.first_bad_sequence or 0) <= through:
            raise PurgeRefused(f"sequence {result.first_bad_sequence}: {result.reason}")
        last_hash = events.filter(sequence=through).values_list("hash", flat=True).get()
        count = events.filter(sequence__gt=already, sequence__lte=through).count()
        checkpoint = _signed_checkpoint(
            org=org,
            sequence=through,
            hash=last_hash,
            kind=AuditCheckpoint.PURGE,
            purged_through_sequence=through,
            purged_count=count,
        )
        with connection.cursor() as cursor:
            # SET LOCAL lasts to the end of the outermost transaction, so switch it off again
            # at once: the bypass covers this DELETE and nothing else.
            cursor.execute("SELECT set_config(%s, 'on', true)", [PURGE_SETTING])
            try:
                cursor.execute("DELETE FROM audit_auditevent WHERE org_id = %s AND sequence <= %s", [org.pk, through])
            finally:
                cursor.execute("SELECT set_config(%s, 'off', true)", [PURGE_SETTING])
        record_event(
            actor=actor,
            org=org,
            action="audit.purged",
            target_type="auditcheckpoint",
            target_id=str(checkpoint.uuid),
            target_label=f"events up to #{through}",
            diff={
                "purged_count": {"after": count},
                "purged_through_sequence": {"after": through},
                "retention_days": {"after": org.audit_retention_days},
            },
        )
    return PurgeResult(checkpoint, count, through)


def purge_all_expired() -> int:
    """purge_expired for every org; how many orgs had events removed."""
    from orgs.models import Organization

    purged = 0
    for org in Organization.objects.all():
        try:
            purged += purge_expired(org) is not None
        except PurgeRefused:
            continue  # left for a person: verify_audit names the problem
    return purged


def verify_and_record(*, actor: Actor, org) -> VerificationResult:
    """Verify the org's chain, then record that it was verified (after: it is not part of the result)."""
    result = verify_chain(org)
    record_event(
        actor=actor,
        org=org,
        action="audit.verified",
        target_type="audit_chain",
        target_id=str(org.pk),
        target_label=f"{result.checked} events",
        diff={
            "ok": {"after": result.ok},
            "checked": {"after": result.checked},
            "first_bad_sequence": {"after": result.first_bad_sequence},
            "reason": {"after": result.reason},
        },
    )
    return result


def checkpoint_record(checkpoint: AuditCheckpoint) -> dict:
    """One checkpoint as exports carry it: the signed document plus `type` and `signature`."""
    return {"type": "checkpoint", **checkpoint_document(checkpoint), "signature": checkpoint.signature}


def checkpoints_jsonl(org) -> Iterator[str]:
    """The org's checkpoints as JSON Lines (each ending in a newline), oldest first, for exports."""
    for checkpoint in AuditCheckpoint.objects.filter(org=org).order_by("sequence", "created_at").iterator():
        yield json.dumps(checkpoint_record(checkpoint), sort_keys=True, ensure_ascii=False) + "\n"

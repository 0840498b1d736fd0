"""Signed checkpoints, the retention purge and recorded verification of the audit chain.

A checkpoint is the control plane's Ed25519 signature (GATEHOUSE_SIGNING_KEY) over an org's chain
head at a time, so an auditor holding only an export and the public key can tell that the chain
they were given is the one the control plane had. A `purge` checkpoint is written before events
leave under retention, so verification starts after it instead of failing at sequence 1.

How often, and the window left open. Whoever can write the table (a database superuser) can
rewrite an event, recompute every hash after it and the chain head: the chain is then consistent
again, and only a signature made before the rewrite can tell. So each org's chain head is signed
when it moved, by the beat entry sign-audit-checkpoints every GATEHOUSE_AUDIT_CHECKPOINT_SECONDS
(60), and on the commit of every GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS-th event of the org
(1000: `record_event` tests `sequence % N`, no query). While Celery runs, the events no signature
covers yet are at most about N, or a minute's worth, whichever is fewer; verification counts them
and says since when (`VerificationResult.uncovered`).

Naming the rewritten event. A signed head alone says only that something before it changed: a
chain rewritten from event k on is consistent up to the checkpoint, and first disagrees there. So
a periodic checkpoint also keeps the first 16 bytes of the hash of every event it covers (from
the event after the previous checkpoint through its own sequence; a longer stretch is signed as
several checkpoints of at most N events), and signs their SHA-256 with a second signature over
`hashes_payload`, so the checkpoint document and the offline verifier stay as they were. When the
walk breaks at sequence s inside a signed stretch (a link, a content hash, the checkpoint's own
hash), verification compares the stored hashes of that stretch, up to s, with the signed ones.
Events before k are untouched and agree; k's stored hash covers its new content after an
authentic prev_hash, so it is the first to disagree: the break is reported at k. (k lies in the
stretch holding s: a rewrite that reached an earlier stretch's checkpoint would have broken the
walk there.) Storage is 16 bytes per event, at most N x 16 bytes per checkpoint; 16 bytes only
locate (content whose hash matches a signed prefix takes about 2**128 tries to find), detection
stays with the full signed head hash. The lists are read only to locate a break: a passing
verification neither reads them nor checks their signatures; a list whose signature fails names
nothing, and the break is reported at its checkpoint with the stretch it bounds. A chain head set
back below a signed checkpoint (events cut from the end) is reported as the first missing event.
"""

import base64
import hashlib
import json
import logging
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
from .models import GENESIS_HASH, AuditChainHead, AuditCheckpoint, AuditEvent
from .services import PLATFORM_CHAIN, VerificationResult, coverage_after, record_event, verify_chain

log = logging.getLogger("audit.integrity")

# Domain separation: a checkpoint signature can never be replayed as a config revision's.
CHECKPOINT_PREFIX = b"gatehouse-audit-checkpoint-v1\n"
HASHES_PREFIX = b"gatehouse-audit-checkpoint-hashes-v1\n"
# How much of each event's hash a checkpoint keeps: enough to name a rewritten event.
HASH_BYTES = 16
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


def hashes_payload(checkpoint: AuditCheckpoint) -> bytes:
    """The exact bytes of a checkpoint's second signature: its event hashes, through their SHA-256."""
    fields = {
        "org": str(checkpoint.org_id),
        "first": checkpoint.first_sequence,
        "sequence": checkpoint.sequence,
        "sha256": hashlib.sha256(bytes(checkpoint.event_hashes)).hexdigest(),
    }
    return HASHES_PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _signature_valid(text: str, payload: bytes, public: Ed25519PublicKey | None) -> bool:
    try:
        (public or verify_key()).verify(base64.b64decode(text, validate=True), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def checkpoint_signature_valid(checkpoint: AuditCheckpoint, public: Ed25519PublicKey | None = None) -> bool:
    return _signature_valid(checkpoint.signature, checkpoint_payload(checkpoint_document(checkpoint)), public)


def hashes_signature_valid(checkpoint: AuditCheckpoint, public: Ed25519PublicKey | None = None) -> bool:
    """Whether the checkpoint's event hashes are the ones signed, one per event it covers."""
    covered = checkpoint.sequence - (checkpoint.first_sequence or checkpoint.sequence + 1) + 1
    return (
        covered > 0
        and len(bytes(checkpoint.event_hashes)) == covered * HASH_BYTES
        and bytes(checkpoint.event_hashes)[-HASH_BYTES:].hex() == checkpoint.hash[: 2 * HASH_BYTES]
        and _signature_valid(checkpoint.hashes_signature, hashes_payload(checkpoint), public)
    )


def _signed_checkpoint(**fields) -> AuditCheckpoint:
    checkpoint = AuditCheckpoint(created_at=timezone.now(), **fields)
    key = signing_key()
    checkpoint.signature = base64.b64encode(key.sign(checkpoint_payload(checkpoint_document(checkpoint)))).decode()
    if checkpoint.first_sequence is not None:
        checkpoint.hashes_signature = base64.b64encode(key.sign(hashes_payload(checkpoint))).decode()
    checkpoint.save(force_insert=True)
    return checkpoint


def checkpoint_span() -> int:
    """The most events one checkpoint covers; also how many events ask for a checkpoint at once."""
    return max(1, settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS)


def _sign_next_stretch(org_id, target: int | None) -> tuple[AuditCheckpoint | None, int]:
    """Sign up to checkpoint_span() events after the org's newest checkpoint, not past `target`
    (None: the chain head). (The checkpoint or None, the target: the head's sequence if None.)"""
    with transaction.atomic():
        # The head's lock keeps two signers (beat and an every-N request) from signing one stretch twice.
        head = AuditChainHead.objects.select_for_update().filter(chain=str(org_id)).first()
        if head is None or head.sequence == 0:
            return None, 0
        target = target or head.sequence
        last = (
            AuditCheckpoint.objects.filter(org_id=org_id)
            .order_by("-sequence", "-created_at")
            .values_list("sequence", "hash")
            .first()
        )
        after, previous = last or (0, GENESIS_HASH)
        through = min(head.sequence, target, after + checkpoint_span())
        if after >= through:
            return None, target
        rows = (
            AuditEvent.objects.filter(org_id=org_id, sequence__gt=after, sequence__lte=through)
            .order_by("sequence")
            .values_list("sequence", "prev_hash", "hash")
        )
        hashes, signed_through = bytearray(), after
        for sequence, prev_hash, stored in rows:
            # Never sign across a gap or a broken link: verification names the break, and a
            # signature over the stretch would not help anyone find it.
            if sequence != signed_through + 1 or prev_hash != previous:
                break
            if sequence == head.sequence and stored != head.hash:
                break
            try:
                hashes += bytes.fromhex(stored)[:HASH_BYTES]
            except ValueError:
                break
            signed_through, previous = sequence, stored
        if signed_through == after:
            log.warning("the audit chain of org %s is broken after sequence %s; left unsigned", org_id, after)
            return None, target
        checkpoint = _signed_checkpoint(
            org_id=org_id,
            sequence=signed_through,
            hash=previous,
            kind=AuditCheckpoint.PERIODIC,
            first_sequence=after + 1,
            event_hashes=bytes(hashes),
        )
        return checkpoint, target


def sign_org_checkpoint(org_id) -> AuditCheckpoint | None:
    """Sign the org's chain head if it moved since its newest checkpoint, as one checkpoint per
    checkpoint_span() events; the newest checkpoint signed, None if the head had not moved."""
    newest, target = None, None
    while True:
        # One stretch per transaction: the org's writers wait for one stretch at most.
        checkpoint, target = _sign_next_stretch(org_id, target)
        if checkpoint is None:
            return newest
        newest = checkpoint
        if checkpoint.sequence >= target:
            return newest


def sign_checkpoint(*, org) -> AuditCheckpoint | None:
    """Sign the org's chain head if it moved since the last checkpoint; None if it did not."""
    return sign_org_checkpoint(org.pk)


# Chains whose head is past their newest checkpoint. The CASE keeps "platform" from the uuid cast.
_MOVED_CHAINS_SQL = """
SELECT head.chain FROM audit_auditchainhead head
WHERE head.chain <> %s AND head.sequence > COALESCE((
    SELECT checkpoint.sequence FROM audit_auditcheckpoint checkpoint
    WHERE checkpoint.org_id = CASE WHEN head.chain = %s THEN NULL ELSE head.chain::uuid END
    ORDER BY checkpoint.sequence DESC LIMIT 1
), 0)
"""


def sign_all_checkpoints() -> int:
    """sign_org_checkpoint for every org whose chain moved; how many orgs got a checkpoint."""
    with connection.cursor() as cursor:
        cursor.execute(_MOVED_CHAINS_SQL, [PLATFORM_CHAIN, PLATFORM_CHAIN])
        chains = [chain for (chain,) in cursor.fetchall()]
    return sum(sign_org_checkpoint(chain) is not None for chain in chains)


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


def signature_coverage(org) -> dict:
    """What no checkpoint covers yet, as of now (without verifying anything): covered_through,
    uncovered and uncovered_since, as in VerificationResult."""
    head = AuditChainHead.objects.filter(chain=str(org.pk)).values_list("sequence", flat=True).first() or 0
    newest = AuditCheckpoint.objects.filter(org=org).order_by("-sequence").values_list("sequence", flat=True).first()
    return coverage_after(org, newest or 0, head)


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
            "covered_through": {"after": result.covered_through},
            "uncovered": {"after": result.uncovered},
            "uncovered_since": {"after": _utc_text(result.uncovered_since) if result.uncovered_since else None},
        },
    )
    return result


def checkpoint_record(checkpoint: AuditCheckpoint) -> dict:
    """One checkpoint as exports carry it: the signed document plus `type` and `signature`."""
    return {"type": "checkpoint", **checkpoint_document(checkpoint), "signature": checkpoint.signature}


def checkpoints_jsonl(org) -> Iterator[str]:
    """The org's checkpoints as JSON Lines (each ending in a newline), oldest first, for exports."""
    checkpoints = AuditCheckpoint.objects.filter(org=org).defer("event_hashes").order_by("sequence", "created_at")
    for checkpoint in checkpoints.iterator():
        yield json.dumps(checkpoint_record(checkpoint), sort_keys=True, ensure_ascii=False) + "\n"

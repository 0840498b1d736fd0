#!/usr/bin/env python3
"""Verify a Gatehouse audit export offline: standard library and `cryptography` only, no Django.

    python verify_audit_export.py EXPORT.jsonl --checkpoints CHECKPOINTS.jsonl --public-key KEY

EXPORT.jsonl is a JSON Lines export of one org's events (any order; lines whose "type" is
"checkpoint" are taken as checkpoints too). KEY is GATEHOUSE_SIGNING_PUBLIC_KEY (base64 of the raw
32 bytes, as `python -m gateway.keys` prints it) or a file holding it. The script recomputes every
event's hash, checks the prev_hash links and that no sequence number is missing, verifies every
checkpoint's Ed25519 signature, and checks that the chain passes through each checkpoint's
(sequence, hash). A chain that starts after sequence 1 must begin right after a signed purge
checkpoint. Exit 0 and "OK ..." when all holds, 1 naming the first problem, 2 for unusable input.
"""

import argparse
import base64
import binascii
import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS_HASH = "0" * 64
CHECKPOINT_PREFIX = b"gatehouse-audit-checkpoint-v1\n"
CHECKPOINT_FIELDS = ("org", "sequence", "hash", "time", "kind", "purged_through", "purged_count")


class Unusable(Exception):
    """The input cannot be read (exit 2)."""


class Broken(Exception):
    """The first verification problem (exit 1)."""


def canonical_encoding(event: dict) -> bytes:
    """The bytes an event's hash covers: a copy of audit.services.canonical_encoding's rules
    (tests/audit/test_integrity.py checks they agree), reading an export line's fields."""
    created_at = datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))
    payload = {
        "org": event["org"] or None,
        "sequence": event["sequence"],
        "action": event["action"],
        "actor": [event["actor_type"], event["actor_id"], event["actor_label"]],
        "target": [event["target_type"], event["target_id"], event["target_label"]],
        "diff": event["diff"],
        "ip": event["ip"],
        "user_agent": event["user_agent"],
        "request_id": event["request_id"],
        "created_at": created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "uuid": event["uuid"],
        "prev_hash": event["prev_hash"],
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: dict) -> str:
    return hashlib.sha256(canonical_encoding(event)).hexdigest()


def checkpoint_payload(checkpoint: dict) -> bytes:
    fields = {name: checkpoint[name] for name in CHECKPOINT_FIELDS}
    return CHECKPOINT_PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_public_key(text: str) -> Ed25519PublicKey:
    if Path(text).is_file():
        text = Path(text).read_text()
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (ValueError, binascii.Error):
        raise Unusable("the public key is not valid base64") from None
    if len(raw) != 32:
        raise Unusable(f"the public key must decode to 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def read_lines(path: str) -> tuple[list[dict], list[dict]]:
    """(events, checkpoints) of a JSON Lines file."""
    events, checkpoints = [], []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise Unusable(f"{path} line {number} is not JSON") from None
                if not isinstance(record, dict):
                    raise Unusable(f"{path} line {number} is not a JSON object")
                (checkpoints if record.get("type") == "checkpoint" else events).append(record)
    except OSError as error:
        raise Unusable(f"cannot read {path}: {error.strerror}") from None
    return events, checkpoints


def verify(events: list[dict], checkpoints: list[dict], public: Ed25519PublicKey | None) -> str:
    """The "OK ..." summary, or Broken naming the first problem."""
    if not events:
        raise Broken("the export holds no events")
    orgs = {event.get("org") for event in events}
    if len(orgs) != 1:
        raise Broken(f"the export mixes {len(orgs)} orgs' chains; verify one org at a time")
    (org,) = orgs
    try:
        events = sorted(events, key=lambda event: event["sequence"])
    except (KeyError, TypeError):
        raise Broken("an event has no integer sequence") from None

    signed: dict[int, list[dict]] = {}
    for checkpoint in checkpoints:
        label = f"checkpoint at sequence {checkpoint.get('sequence')}"
        if checkpoint.get("org") != org:
            raise Broken(f"{label} belongs to another org")
        if public is None:
            raise Broken("checkpoints were given without --public-key")
        try:
            public.verify(base64.b64decode(checkpoint["signature"], validate=True), checkpoint_payload(checkpoint))
        except (InvalidSignature, KeyError, ValueError, TypeError):
            raise Broken(f"{label} has an invalid signature") from None
        signed.setdefault(checkpoint["sequence"], []).append(checkpoint)

    first = events[0]
    purge_note = ""
    if first["sequence"] == 1:
        expected_prev = GENESIS_HASH
    else:
        purges = [c for c in signed.get(first["sequence"] - 1, []) if c["kind"] == "purge"]
        if not purges:
            raise Broken(
                f"sequence {first['sequence'] - 1} and before are missing and no signed purge checkpoint covers them"
            )
        expected_prev = purges[0]["hash"]
        purge_note = (
            f"; events up to sequence {purges[0]['purged_through']} were purged under retention on "
            f"{purges[0]['time'][:10]}"
        )
    expected_sequence = first["sequence"]
    hashes: dict[int, str] = {}
    for event in events:
        sequence = event["sequence"]
        if sequence != expected_sequence:
            if sequence < expected_sequence:
                raise Broken(f"sequence {sequence} appears twice")
            raise Broken(f"sequence {expected_sequence} is missing (next is {sequence})")
        if event.get("prev_hash") != expected_prev:
            raise Broken(f"sequence {sequence}: prev_hash does not match the previous event")
        try:
            recomputed = event_hash(event)
        except (KeyError, TypeError, ValueError):
            raise Broken(f"sequence {sequence}: a field the hash covers is missing or malformed") from None
        if recomputed != event.get("hash"):
            raise Broken(f"sequence {sequence}: content does not match its hash")
        hashes[sequence] = event["hash"]
        expected_sequence, expected_prev = sequence + 1, event["hash"]

    matched = 0
    last = events[-1]["sequence"]
    for sequence in sorted(signed):
        for checkpoint in signed[sequence]:
            if sequence in hashes:
                if hashes[sequence] != checkpoint["hash"]:
                    raise Broken(f"sequence {sequence}: does not match the checkpoint signed at {checkpoint['time']}")
                matched += 1
            elif sequence == first["sequence"] - 1 and checkpoint["hash"] == first["prev_hash"]:
                matched += 1
    if checkpoints and not matched:
        raise Broken("no signed checkpoint falls within the exported events")
    beyond = sum(1 for sequence in signed if sequence > last)
    summary = (
        f"OK {len(events)} events, sequences {first['sequence']}-{last}, of org {org}; "
        f"{matched} signed checkpoints matched"
    )
    if beyond:
        summary += f" ({beyond} are past the export's last event)"
    return summary + purge_note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="the JSON Lines export of one org's events")
    parser.add_argument("--checkpoints", help="the org's signed checkpoints as JSON Lines")
    parser.add_argument("--public-key", help="GATEHOUSE_SIGNING_PUBLIC_KEY, or a file holding it")
    options = parser.parse_args(argv)
    try:
        events, checkpoints = read_lines(options.export)
        if options.checkpoints:
            checkpoints += read_lines(options.checkpoints)[1]
        public = load_public_key(options.public_key) if options.public_key else None
        print(verify(events, checkpoints, public))
    except Unusable as error:
        print(f"ERROR {error}", file=sys.stderr)
        return 2
    except Broken as error:
        print(f"BROKEN {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

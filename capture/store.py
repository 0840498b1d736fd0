"""Storing captured content as ingestion takes usage events (budgets/ingestion.py).

Each event's `content` was sealed by the gateway to its org's capture key (gateway/capture.py).
Here it is opened, redacted (capture/redact.py), cut again to the org's limit and sealed under
the org's data key, then stored in the day's partition. A redelivered event inserts nothing.
Content that does not open or cannot be redacted in time is dropped, never the usage row: the
request stays billed, and the drop is logged and counted.
"""

import base64
import binascii
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import connection

from gateway import capture as sealing
from orgs.models import Organization

from . import partitions, redact
from .keys import OpenKeys, open_keys

log = logging.getLogger("capture")
MAX_SEALED_TEXT = 4 * (2 * 65_536 + 1024)  # base64 of the largest content a gateway sends
NONCE_BYTES = 12
_transit: dict[bytes, AESGCM] = {}  # gateway ephemeral key -> derived key (gateway/capture.py)
MAX_TRANSIT_KEYS = 4096
_SETTINGS_SECONDS = 10.0
_settings: dict[str, tuple[float, int, list]] = {}  # org id -> (until, max bytes, compiled patterns)


INSERT = """
INSERT INTO capture_capturedcontent (
    request_id, org_id, occurred_at, sealed, prompt_bytes, answer_bytes, prompt_cut, answer_cut, redactions
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Incoming:
    request_id: str
    org_id: str
    ts: float
    content: bytes  # base64, as the usage event carries it


def storage_context(org_id: str, request_id: str) -> bytes:
    return f"gatehouse:v1:captured:{org_id}:{request_id}".encode()


def seal_stored(keys: OpenKeys, request_id: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + keys.data.encrypt(nonce, plaintext, storage_context(keys.org_id, request_id))


def open_stored(keys: OpenKeys, request_id: str, sealed: bytes) -> sealing.Captured:
    sealed = bytes(sealed)
    plaintext = keys.data.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], storage_context(keys.org_id, request_id))
    return sealing.unpack_plaintext(plaintext)


def _org_settings(org_id: str) -> tuple[int, list]:
    now = time.monotonic()
    cached = _settings.get(org_id)
    if cached is None or cached[0] < now:
        org = Organization.objects.filter(pk=org_id).values("capture_max_bytes", "capture_redact_patterns").first()
        if org is None:
            return 0, []
        patterns = redact.compile_patterns(list(org["capture_redact_patterns"] or []))
        cached = _settings[org_id] = (now + _SETTINGS_SECONDS, org["capture_max_bytes"], patterns)
    return cached[1], cached[2]


def _opened(keys: OpenKeys, item: Incoming) -> sealing.Captured:
    if len(item.content) > MAX_SEALED_TEXT:
        raise sealing.CaptureError("The captured content is larger than any gateway sends.")
    try:
        sealed = base64.b64decode(item.content, validate=True)
    except (binascii.Error, ValueError):
        raise sealing.CaptureError("The captured content is not base64.") from None
    ephemeral = sealed[: sealing.PUBLIC_KEY_BYTES]
    aead = _transit.get(ephemeral)
    if aead is None:
        aead = sealing.transit_key(keys.private, sealed)
        if len(_transit) >= MAX_TRANSIT_KEYS:
            _transit.clear()
        _transit[ephemeral] = aead
    plaintext = sealing.open_with(aead, sealed, request_id=item.request_id, org_id=item.org_id)
    return sealing.unpack_plaintext(plaintext)


def _redacted(text: bytes, patterns: list, limit: int) -> tuple[bytes, int, bool]:
    cleaned, count = redact.redact(text.decode("utf-8", "replace"), patterns)
    encoded = cleaned.encode()
    if len(encoded) > limit:  # a replacement can only shorten a secret, but the limit may have dropped
        return encoded[:limit].decode("utf-8", "ignore").encode(), count, True
    return encoded, count, False


def _row(item: Incoming) -> tuple | None:
    keys = open_keys(item.org_id)
    if keys is None:
        raise sealing.CaptureError("The org has no capture keys.")
    captured = _opened(keys, item)
    limit, patterns = _org_settings(item.org_id)
    prompt, prompt_count, prompt_cut = _redacted(captured.prompt, patterns, limit)
    answer, answer_count, answer_cut = _redacted(captured.answer, patterns, limit)
    plaintext = sealing.pack_plaintext(prompt, answer, max(limit, len(prompt), len(answer)))
    occurred_at = datetime.fromtimestamp(item.ts, UTC)
    return (
        item.request_id,
        item.org_id,
        occurred_at,
        seal_stored(keys, item.request_id, plaintext),
        len(prompt),
        len(answer),
        captured.prompt_cut or prompt_cut,
        captured.answer_cut or answer_cut,
        prompt_count + answer_count,
    )


def store(items: Sequence[Incoming]) -> int:
    """Store what can be stored, inside the caller's transaction; how many rows were new."""
    rows = []
    for item in items:
        try:
            row = _row(item)
        except redact.Unredactable as slow:
            log.warning("content of request %s dropped: redaction pattern %r timed out", item.request_id, str(slow))
            continue
        except Exception as error:  # nothing in an event may stop ingestion
            log.warning("content of request %s dropped: %s", item.request_id, type(error).__name__)
            continue
        if row is not None:
            rows.append(row)
    if not rows:
        return 0
    partitions.ensure({partitions.day_of(row[2]) for row in rows})
    with connection.cursor() as cursor:
        cursor.executemany(INSERT, rows)
        return max(cursor.rowcount, 0)

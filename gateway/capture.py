"""Content capture: a request's prompt and answer, sealed on the worker for its org.

An org that turns capture on (capture/ in the portal) has an X25519 key pair; the config
gives workers only its public half (OrgConfig.capture_key). A worker seals each captured
request to that key, so the content crosses Redis, the usage spool and the stream journal as
ciphertext that no gateway can open again: only the control plane, which holds the private
half wrapped under its key ring, opens it, redacts it and stores it sealed under the org's
data key (capture/store.py).

The format, version 1, of the `content` field of a usage event:

    ephemeral public key (32) | nonce (12) | AES-256-GCM(key, nonce, plaintext, aad)

`key` is HKDF-SHA256 of the X25519 secret shared by the worker's ephemeral key and the org's
key (salt: both public keys). A worker keeps one ephemeral key per org for EPHEMERAL_SECONDS,
so the costly exchange happens once per org and period, and each request costs one AES-GCM
pass. `aad` binds the ciphertext to its request and org. The plaintext:

    flags (1: bit 0 prompt truncated, bit 1 answer truncated) | prompt length (4, big-endian) |
    prompt | answer

The prompt is the request body as the caller sent it, the answer the body the caller got
(for a stream, the event stream as sent); each is cut at the org's `max_bytes`.
"""

import os
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
EPHEMERAL_SECONDS = 3600.0
_INFO = b"gatehouse:capture:v1"
_HEADER = struct.Struct(">BI")
PROMPT_CUT, ANSWER_CUT = 1, 2


class CaptureError(ValueError):
    """Sealed content that does not open: wrong key, altered, or not this format."""


def derive_key(shared: bytes, ephemeral_public: bytes, org_public: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + org_public, info=_INFO)
    return hkdf.derive(shared)


def associated_data(request_id: str, org_id: str) -> bytes:
    return f"gatehouse:capture:{VERSION}:{org_id}:{request_id}".encode()


def pack_plaintext(prompt: bytes, answer: bytes, limit: int) -> bytes:
    flags = (PROMPT_CUT if len(prompt) > limit else 0) | (ANSWER_CUT if len(answer) > limit else 0)
    prompt, answer = prompt[:limit], answer[:limit]
    return _HEADER.pack(flags, len(prompt)) + prompt + answer


@dataclass(frozen=True, slots=True)
class Captured:
    prompt: bytes
    answer: bytes
    prompt_cut: bool
    answer_cut: bool


def unpack_plaintext(plaintext: bytes) -> Captured:
    if len(plaintext) < _HEADER.size:
        raise CaptureError("The captured content is truncated.")
    flags, length = _HEADER.unpack_from(plaintext)
    body = plaintext[_HEADER.size :]
    if length > len(body):
        raise CaptureError("The captured content's prompt length is wrong.")
    return Captured(body[:length], body[length:], bool(flags & PROMPT_CUT), bool(flags & ANSWER_CUT))


class _Ephemeral:
    __slots__ = ("aead", "public", "until")

    def __init__(self, org_public: bytes, now: float):
        private = X25519PrivateKey.generate()
        self.public = private.public_key().public_bytes_raw()
        shared = private.exchange(X25519PublicKey.from_public_bytes(org_public))
        self.aead = AESGCM(derive_key(shared, self.public, org_public))
        self.until = now + EPHEMERAL_SECONDS


class Sealer:
    """Seals captured content for orgs; one per worker (see the module docstring)."""

    def __init__(self) -> None:
        self._keys: dict[bytes, _Ephemeral] = {}

    def seal(self, org_public: bytes, *, request_id: str, org_id: str, plaintext: bytes) -> bytes:
        now = time.monotonic()
        ephemeral = self._keys.get(org_public)
        if ephemeral is None or ephemeral.until <= now:
            ephemeral = self._keys[org_public] = _Ephemeral(org_public, now)
        nonce = os.urandom(NONCE_BYTES)
        sealed = ephemeral.aead.encrypt(nonce, plaintext, associated_data(request_id, org_id))
        return ephemeral.public + nonce + sealed


def open_sealed(private: X25519PrivateKey, sealed: bytes, *, request_id: str, org_id: str) -> bytes:
    """The plaintext of `Sealer.seal`'s output; CaptureError when it does not open. (The
    control plane's side: capture/store.py caches the derived key per ephemeral key.)"""
    return open_with(transit_key(private, sealed), sealed, request_id=request_id, org_id=org_id)


def transit_key(private: X25519PrivateKey, sealed: bytes) -> AESGCM:
    if len(sealed) < PUBLIC_KEY_BYTES + NONCE_BYTES + 16:
        raise CaptureError("The captured content is truncated.")
    ephemeral_public = sealed[:PUBLIC_KEY_BYTES]
    org_public = private.public_key().public_bytes_raw()
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    except ValueError:
        raise CaptureError("The captured content's key does not open.") from None
    return AESGCM(derive_key(shared, ephemeral_public, org_public))


def open_with(aead: AESGCM, sealed: bytes, *, request_id: str, org_id: str) -> bytes:
    nonce = sealed[PUBLIC_KEY_BYTES : PUBLIC_KEY_BYTES + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, sealed[PUBLIC_KEY_BYTES + NONCE_BYTES :], associated_data(request_id, org_id))
    except InvalidTag:
        raise CaptureError("The captured content does not open: wrong key, or altered.") from None

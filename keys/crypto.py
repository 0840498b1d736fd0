"""Envelope encryption for provider secrets.

Each credential has its own random 256-bit data key. Every secret field is sealed with
AES-256-GCM under that data key, with associated data naming the org, the credential and the
field, so a ciphertext copied to another row, field or org fails to decrypt. The data key is
wrapped (AES-256-GCM again) by a key-encryption key (KEK) from a versioned key ring given in
settings; the wrapped key records its ring version, so the ring can rotate by re-wrapping
data keys without touching any sealed secret.

Every failure raises DecryptionError: nothing here ever returns an empty or original value.
"""

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = "v1"


class KeyRingError(Exception):
    """The key ring is missing, malformed, or does not match what the database was sealed with."""


class DecryptionError(Exception):
    """A sealed value or wrapped key could not be opened. The message never holds secret material."""


def decode_key(text: str, name: str) -> bytes:
    """A KEK is 32 random bytes, written as base64 (standard or URL-safe)."""
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{name} is not valid base64.") from None
    if len(raw) != KEY_BYTES:
        raise KeyRingError(f"{name} must decode to {KEY_BYTES} bytes, got {len(raw)}.")
    return raw


def generate_key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode().rstrip("=")


@dataclass(frozen=True)
class KeyRing:
    keys: dict[int, bytes]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("The key ring is empty: set GATEHOUSE_KEK_1 (32 random bytes, base64).")

    @property
    def current_version(self) -> int:
        return max(self.keys)

    def key(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise DecryptionError(f"Key-ring version {version} is not configured.") from None


def _seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def _open(key: bytes, sealed: bytes, associated_data: bytes, what: str) -> bytes:
    if len(sealed) < NONCE_BYTES + 16:
        raise DecryptionError(f"{what} is truncated.")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise DecryptionError(f"{what} does not decrypt: wrong key, or it was moved or altered.") from None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def data_key_context(org_id, credential_id) -> bytes:
    return f"gatehouse:{FORMAT}:data-key:{org_id}:{credential_id}".encode()


def field_context(org_id, credential_id, field: str) -> bytes:
    return f"gatehouse:{FORMAT}:field:{org_id}:{credential_id}:{field}".encode()


def wrap_data_key(ring: KeyRing, data_key: bytes, *, org_id, credential_id) -> tuple[bytes, int]:
    """(wrapped key, ring version) under the ring's newest KEK."""
    version = ring.current_version
    return _seal(ring.key(version), data_key, data_key_context(org_id, credential_id)), version


def unwrap_data_key(ring: KeyRing, wrapped: bytes, version: int, *, org_id, credential_id) -> bytes:
    return _open(ring.key(version), bytes(wrapped), data_key_context(org_id, credential_id), "The data key")


def seal_field(data_key: bytes, value: str, *, org_id, credential_id, field: str) -> str:
    sealed = _seal(data_key, value.encode(), field_context(org_id, credential_id, field))
    return base64.b64encode(sealed).decode()


def open_field(data_key: bytes, sealed_text: str, *, org_id, credential_id, field: str) -> str:
    try:
        sealed = base64.b64decode(sealed_text, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError(f"The sealed {field} is not valid base64.") from None
    plaintext = _open(data_key, sealed, field_context(org_id, credential_id, field), f"The sealed {field}")
    return plaintext.decode()


# The known value each key-ring version seals at first use; opening it at start-up proves the
# configured key is the one the database was written with (fail closed on a wrong key).
CANARY_PLAINTEXT = b"gatehouse key-ring check"


def canary_context(version: int) -> bytes:
    return f"gatehouse:{FORMAT}:canary:{version}".encode()


def seal_canary(ring: KeyRing, version: int) -> bytes:
    return _seal(ring.key(version), CANARY_PLAINTEXT, canary_context(version))


def check_canary(ring: KeyRing, version: int, sealed: bytes) -> None:
    if (
        _open(ring.key(version), bytes(sealed), canary_context(version), f"Key-ring version {version}")
        != CANARY_PLAINTEXT
    ):
        raise KeyRingError(f"Key-ring version {version} opened the check value to something unexpected.")


# Other secrets the key ring wraps (capture/keys.py): sealed under a context naming what they are.


def seal_bytes(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    return _seal(key, plaintext, context)


def open_bytes(key: bytes, sealed: bytes, context: bytes, what: str) -> bytes:
    return _open(key, bytes(sealed), context, what)

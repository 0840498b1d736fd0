"""An org's capture keys: made on first use, wrapped by the key ring, opened once per process.

See capture.models.CaptureKeys for what each key is for."""

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import transaction

from keys.crypto import FORMAT, new_data_key, open_bytes, seal_bytes
from keys.key_ring import key_ring

from .models import CaptureKeys


def _context(org_id, which: str) -> bytes:
    return f"gatehouse:{FORMAT}:capture-{which}:{org_id}".encode()


def ensure_keys(org) -> CaptureKeys:
    """The org's capture keys, made now if it has none (inside the caller's transaction)."""
    existing = CaptureKeys.objects.filter(org=org).first()
    if existing is not None:
        return existing
    ring = key_ring()
    version = ring.current_version
    private = X25519PrivateKey.generate()
    keys = CaptureKeys(
        org=org,
        public_key=private.public_key().public_bytes_raw(),
        wrapped_private_key=seal_bytes(ring.key(version), private.private_bytes_raw(), _context(org.pk, "private")),
        wrapped_data_key=seal_bytes(ring.key(version), new_data_key(), _context(org.pk, "data")),
        kek_version=version,
    )
    with transaction.atomic():
        keys.save(force_insert=True)
    return keys


class OpenKeys:
    """An org's capture keys, unwrapped: `private` opens what gateways sealed, `data` seals
    and opens stored content."""

    def __init__(self, keys: CaptureKeys):
        ring = key_ring()
        secret = ring.key(keys.kek_version)
        self.org_id = str(keys.org_id)
        self.private = X25519PrivateKey.from_private_bytes(
            open_bytes(secret, keys.wrapped_private_key, _context(keys.org_id, "private"), "The capture key")
        )
        self.data = AESGCM(open_bytes(secret, keys.wrapped_data_key, _context(keys.org_id, "data"), "The data key"))


_opened: dict[str, OpenKeys] = {}
MAX_OPENED = 1024


def open_keys(org_id: str) -> OpenKeys | None:
    """The org's unwrapped keys, None when it never turned capture on. Keys never change once
    made, so each process opens an org's once (a missing org is asked again next time)."""
    found = _opened.get(org_id)
    if found is None:
        keys = CaptureKeys.objects.filter(org_id=org_id).first()
        if keys is None:
            return None
        if len(_opened) >= MAX_OPENED:
            _opened.clear()
        found = _opened[org_id] = OpenKeys(keys)
    return found

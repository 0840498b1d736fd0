"""The configured key ring, checked against the database before first use (fail closed)."""

import functools

from django.conf import settings
from django.db import connection, transaction

from .crypto import KeyRing, KeyRingError, check_canary, decode_key, seal_canary


@functools.cache
def configured_key_ring() -> KeyRing:
    return KeyRing(
        {version: decode_key(text, f"GATEHOUSE_KEK_{version}") for version, text in settings.GATEHOUSE_KEK_RING.items()}
    )


def verify_key_ring(ring: KeyRing | None = None) -> KeyRing:
    """Open each version's known value; seal one for a version seen for the first time.
    Raises KeyRingError when a configured key is not the one the database was sealed with,
    or when rows are sealed under a version the ring no longer has."""
    from .models import KeyRingCheck, ProviderCredential

    ring = ring or configured_key_ring()
    with transaction.atomic():
        checks = {check.version: check for check in KeyRingCheck.objects.select_for_update()}
        for version in ring.keys:
            if version in checks:
                try:
                    check_canary(ring, version, checks[version].sealed)
                except Exception as error:
                    raise KeyRingError(
                        f"GATEHOUSE_KEK_{version} is not the key this database was sealed with ({error}). "
                        "Refusing to start: fix the key ring."
                    ) from None
            else:
                KeyRingCheck.objects.create(version=version, sealed=seal_canary(ring, version))
    in_use = set(ProviderCredential.objects.values_list("kek_version", flat=True).distinct())
    missing = sorted(in_use - set(ring.keys))
    if missing:
        raise KeyRingError(
            f"Provider credentials are sealed under key-ring version(s) {missing}, which are not configured "
            "(GATEHOUSE_KEK_<version>). Refusing to start."
        )
    return ring


@functools.cache
def _verified_once() -> KeyRing:
    return verify_key_ring()


def key_ring() -> KeyRing:
    """The key ring for sealing and opening secrets, verified once per process."""
    return _verified_once()


def key_ring_tables_exist() -> bool:
    return "keys_keyringcheck" in connection.introspection.table_names()

from django.apps import AppConfig
from django.core import checks


class KeysConfig(AppConfig):
    name = "keys"
    verbose_name = "Keys and credentials"

    def ready(self) -> None:
        checks.register(check_key_ring)


def check_key_ring(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Start-up (runserver, migrate, check) refuses a key ring that cannot open what is sealed."""
    from django.db import DatabaseError

    from .crypto import KeyRingError
    from .key_ring import configured_key_ring, key_ring_tables_exist, verify_key_ring

    try:
        ring = configured_key_ring()
        if key_ring_tables_exist():
            verify_key_ring(ring)
    except KeyRingError as error:
        return [checks.Critical(str(error), id="keys.E001")]
    except DatabaseError:
        return []  # no database yet: migrate will create it, the next start checks
    return []

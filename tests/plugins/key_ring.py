import pytest

from keys import key_ring
from keys.crypto import generate_key_text


def reset_key_ring_cache() -> None:
    key_ring.configured_key_ring.cache_clear()
    key_ring._verified_once.cache_clear()


@pytest.fixture
def fresh_key_ring(settings):
    """A key ring of the test's own; call it with {version: key} to change the ring."""

    def use(ring: dict[int, str]) -> None:
        settings.GATEHOUSE_KEK_RING = ring
        reset_key_ring_cache()

    use({1: generate_key_text()})
    yield use
    reset_key_ring_cache()

import pytest

from fleet.redis_client import redis_client, redis_keys
from tests.keys.conftest import fresh_key_ring  # noqa: F401


@pytest.fixture
def clean_redis():
    """Remove this test run's config keys before and after a test."""
    client, keys = redis_client(), redis_keys()

    def wipe() -> None:
        for name in client.scan_iter(f"{keys.prefix}:*"):
            client.delete(name)

    wipe()
    yield client
    wipe()

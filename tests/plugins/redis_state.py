import pytest

from fleet.redis_client import redis_client, redis_keys


@pytest.fixture
def clean_redis():
    """Remove this test run's Gatehouse keys (config, fleet, usage, limits) before and after."""
    client, keys = redis_client(), redis_keys()

    def wipe() -> None:
        for name in client.scan_iter(f"{keys.prefix}:*"):
            client.delete(name)

    wipe()
    yield client
    wipe()

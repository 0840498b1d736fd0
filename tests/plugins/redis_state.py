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


def _forget_clients() -> None:
    from budgets import ingestion
    from fleet import redis_client as fleet_redis

    fleet_redis.redis_client.cache_clear()
    fleet_redis._status_client_for.cache_clear()
    ingestion._stream_client_for.cache_clear()


@pytest.fixture
def use_redis(settings):
    """use_redis(url) -> the control plane's client of that Redis: from then on REDIS_URL is `url`
    (a Sentinel or Cluster topology) in this process and in every process started after. List
    it before `served`/`clean_redis` so that the whole test runs there. The Celery broker stays
    on the suite's Redis in this process."""

    def use(url: str):
        settings.REDIS_URL = url
        _forget_clients()
        from fleet.redis_client import redis_client

        return redis_client()

    yield use
    _forget_clients()

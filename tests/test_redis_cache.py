"""The portal's cache (Django's Redis backend, allauth's rate limits) on a Sentinel-monitored
Redis: it follows a failover like every other Redis client (issue 13)."""

import time

import redis
from django.core.cache.backends.redis import RedisCache


def test_the_cache_finds_the_new_primary_after_a_failover(sentinel_topology):
    """LOCATION as settings.py gives it: a list, as Django splits a string at commas."""
    cache = RedisCache([sentinel_topology.url], {"OPTIONS": {"pool_class": "controlplane.redis_cache.ConnectionPool"}})
    cache.set("greeting", "hello", 60)
    assert cache.get("greeting") == "hello"
    primary = sentinel_topology.current_master_node()
    assert primary.client().execute_command("WAIT", 1, 2000) >= 1
    old, _ = sentinel_topology.kill_master()
    sentinel_topology.wait_for_failover(old.address, timeout=15)
    deadline = time.monotonic() + 10
    while True:
        try:
            cache.set("after", "written on the new primary", 60)
            break
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert cache.get("greeting") == "hello"
    assert sentinel_topology.current_master_node().client().exists(":1:after") == 1

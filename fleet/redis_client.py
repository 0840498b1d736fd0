import functools

import redis
from django.conf import settings

from gateway.redis_keys import RedisKeys
from gateway.redis_url import sync_client


@functools.cache
def redis_client() -> "redis.Redis | redis.RedisCluster":
    """The gateway data's Redis (REDIS_URL: one server, Sentinel or Cluster; gateway/redis_url.py)."""
    return sync_client(settings.REDIS_URL, timeout=5, connect_timeout=5)


def status_client() -> "redis.Redis | redis.RedisCluster":
    """For reads that only report (the publish banner on every page, /metrics): a Redis that does
    not answer costs a page a quarter of a second, not redis_client's five."""
    return _status_client_for(settings.REDIS_URL)


@functools.cache
def _status_client_for(url: str) -> "redis.Redis | redis.RedisCluster":
    return sync_client(url, timeout=0.25, connect_timeout=0.25)


def redis_keys() -> RedisKeys:
    return RedisKeys.for_url(settings.GATEHOUSE_REDIS_PREFIX, settings.REDIS_URL)

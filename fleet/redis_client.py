import functools

import redis
from django.conf import settings

from gateway.redis_keys import RedisKeys


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def status_client() -> redis.Redis:
    """For reads that only report (the publish banner on every page, /metrics): a Redis that does
    not answer costs a page a quarter of a second, not redis_client's five."""
    return _status_client_for(settings.REDIS_URL)


@functools.cache
def _status_client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)


def redis_keys() -> RedisKeys:
    return RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)

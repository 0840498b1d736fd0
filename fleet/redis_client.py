import functools

import redis
from django.conf import settings

from gateway.redis_keys import RedisKeys


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def redis_keys() -> RedisKeys:
    return RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)

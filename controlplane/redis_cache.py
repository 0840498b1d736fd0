"""The portal's cache (Django's Redis backend) on any broker URL gateway/redis_url.py reads:
Django builds its connections from `ConnectionPool.from_url`, which here also follows a
Sentinel-monitored primary."""

import redis

from gateway.redis_url import parse_redis_url, sync_client


class ConnectionPool(redis.ConnectionPool):
    @classmethod
    def from_url(cls, url: str, **options: object) -> redis.ConnectionPool:  # type: ignore[override]
        if parse_redis_url(url).mode == "single":
            return redis.ConnectionPool.from_url(url, **options)
        client = sync_client(url)
        if not isinstance(client, redis.Redis):
            raise ValueError("the portal's cache cannot use a Redis Cluster (settings refuse one)")
        return client.connection_pool  # a SentinelConnectionPool

"""The Celery broker transport: kombu's Redis transport with one repair, so that a worker rides
out a Redis outage instead of exiting (issue 11, observation 1).

When the broker connection drops while a worker holds unacknowledged messages (a task running
with acks_late, or one waiting for its countdown), Celery collects the broken connection and
then closes it. The collect detaches the transport from its connection; the close then tries
again to give the unacknowledged messages back to Redis, builds a client from the detached
transport, and fails with AttributeError ("'NoneType' object has no attribute 'hostname'"),
which Celery does not expect there: the worker stops with "Unrecoverable error".

Here a channel whose transport has been detached says so with a connection error, the kind
kombu ignores while closing. The messages stay in Redis's unacknowledged set, from which kombu
puts them back on their queue after the visibility timeout (one hour by default), and the
worker reconnects with Celery's usual backoff. tests/test_outage_drill.py reproduces it.

The same repair applies to kombu's Sentinel transport, which GATEHOUSE_BROKER_URL selects with a
redis+sentinel:// URL (gateway/redis_url.py); `kombu_broker` turns that URL into kombu's form.
"""

from urllib.parse import quote

import redis
from kombu.transport import redis as kombu_redis

from gateway.redis_url import RedisLocation


class _Repaired:
    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:  # type: ignore[attr-defined]  # collected after a broker outage
            raise redis.ConnectionError("the broker connection was closed after an outage")
        return super()._connparams(asynchronous)  # type: ignore[misc]


class Channel(_Repaired, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_Repaired, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def kombu_broker(location: RedisLocation) -> tuple[str, dict[str, object]]:
    """(broker URL, transport options) as kombu takes them, for a location that is not a Cluster."""
    if location.mode != "sentinel":
        return location.url, {}
    credentials = ""
    if location.password:
        credentials = f"{quote(location.username or '', safe='')}:{quote(location.password, safe='')}@"
    url = ";".join(f"sentinel://{credentials}{host}:{port}/{location.db}" for host, port in location.nodes)
    sentinel_kwargs = {
        key: value
        for key, value in (("username", location.sentinel_username), ("password", location.sentinel_password))
        if value
    }
    options: dict[str, object] = {"master_name": location.service}
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return url, options

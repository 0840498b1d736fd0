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
"""

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:  # the connection was collected after a broker outage
            raise redis.ConnectionError("the broker connection was closed after an outage")
        return super()._connparams(asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel

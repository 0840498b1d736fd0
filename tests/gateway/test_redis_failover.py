"""The gateway's Redis connections behind Sentinel (issue 13): they find the new primary after a
failover, and with GATEWAY_REDIS_MIN_REPLICAS no write they acknowledged is lost with the old one."""

import asyncio
import time

import pytest
import redis

from gateway.redis_pipe import NotReplicated, RedisPipe
from gateway.redis_url import async_client, sync_client

PASSWORD = "canary-redis-password"


async def count_up(pipe: RedisPipe, key: str, seconds: float, during) -> tuple[int, int, float]:
    """INCR `key` in a loop for `seconds`, calling `during()` (a blocking kill) on a thread a
    second in; (acknowledged, failed, seconds from the first failure to the next success)."""
    acknowledged = failed = 0
    first_failure = recovered = None
    loop = asyncio.get_running_loop()
    disruption = loop.run_in_executor(None, lambda: (time.sleep(1), during()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await pipe.call("INCR", key)
        except (redis.RedisError, OSError):
            failed += 1
            first_failure = first_failure or time.monotonic()
            await asyncio.sleep(0.05)
            continue
        acknowledged += 1
        if first_failure and recovered is None:
            recovered = time.monotonic() - first_failure
    await disruption
    return acknowledged, failed, recovered or 0.0


@pytest.mark.parametrize("sentinel_topology", [{"password": PASSWORD}], indirect=True)
def test_the_pipe_follows_a_failover_and_loses_no_acknowledged_write(sentinel_topology, report):
    url = sentinel_topology.url

    async def drill() -> tuple[int, int, float]:
        pipe = RedisPipe(url, timeout=1, connect_timeout=1, min_replicas=1, replica_timeout_ms=200)
        try:
            assert await pipe.call("PING") == b"PONG"
            return await count_up(pipe, "drill:counter", 12, sentinel_topology.kill_master)
        finally:
            await pipe.close()

    acknowledged, failed, recovered = asyncio.run(drill())
    report(f"\npipe behind Sentinel: {acknowledged} writes acknowledged, {failed} failed, back in {recovered:.2f} s")
    assert failed > 0 and recovered > 0  # the kill was felt, and the pipe came back by itself
    assert recovered < 10
    survivor = sync_client(url, timeout=2, connect_timeout=2)
    assert int(survivor.get("drill:counter")) >= acknowledged  # every acknowledged write survived


def test_without_enough_replicas_a_write_is_refused_not_trusted(sentinel_topology):
    """Both replicas gone: the primary still takes the write, but the pipe does not count on it."""
    for replica in sentinel_topology.replicas:
        sentinel_topology.kill(replica)

    async def write() -> None:
        pipe = RedisPipe(sentinel_topology.url, timeout=2, connect_timeout=2, min_replicas=1, replica_timeout_ms=50)
        try:
            await pipe.call("SET", "drill:lonely", "1")
        finally:
            await pipe.close()

    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        asyncio.run(write())


def test_the_clients_of_the_control_plane_and_the_follower_find_the_new_primary(sentinel_topology):
    url = sentinel_topology.url
    client = sync_client(url, timeout=1, connect_timeout=1)
    client.set("drill:before", "1")
    assert client.execute_command("WAIT", 1, 2000) >= 1
    old, _ = sentinel_topology.kill_master()
    sentinel_topology.wait_for_failover(old.address, timeout=15)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert client.get("drill:before") == b"1"
            client.set("drill:after", "1")  # a write: this is the new primary, not a replica
            break
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            assert time.monotonic() < deadline
            time.sleep(0.1)

    async def follower_view() -> bytes | None:
        reader = async_client(url, timeout=1, connect_timeout=1)
        try:
            return await reader.get("drill:after")
        finally:
            await reader.aclose()

    assert asyncio.run(follower_view()) == b"1"

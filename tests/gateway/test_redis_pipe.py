"""The gateway's pipelined Redis connection (gateway/redis_pipe.py) against real Redis servers:
replies in order under concurrency, scripts loaded when Redis forgot them, and outages that
fail fast and heal on the next command."""

import asyncio
import uuid

import pytest
import redis
from django.conf import settings

from gateway.redis_pipe import RedisPipe
from tests.plugins.disposable_redis import DisposableRedis


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def name():
    key = f"{settings.GATEHOUSE_REDIS_PREFIX}:pipe-test:{uuid.uuid4().hex}"
    yield key
    redis.Redis.from_url(settings.REDIS_URL).delete(key)


def test_concurrent_commands_get_their_own_replies_in_the_configured_database(name):
    async def scenario():
        pipe = RedisPipe(settings.REDIS_URL)
        replies = await asyncio.gather(*(pipe.call("INCR", name) for _ in range(200)))
        await pipe.close()
        return replies

    assert sorted(run(scenario())) == list(range(1, 201))
    # The URL's database was selected: redis-py, on the same URL, sees the count.
    assert int(redis.Redis.from_url(settings.REDIS_URL).get(name)) == 200


def test_call_many_sends_a_batch_and_an_error_reply_raises_without_breaking_the_connection(name):
    async def scenario():
        pipe = RedisPipe(settings.REDIS_URL)
        first = await pipe.call_many([("SET", name, b"\x00binary\xff"), ("GET", name)])
        with pytest.raises(redis.ResponseError):
            await pipe.call("INCR", name)  # not an integer
        after = await pipe.call("STRLEN", name)
        await pipe.close()
        return first, after

    first, after = run(scenario())
    assert first == [b"OK", b"\x00binary\xff"]
    assert after == 8


def test_a_script_is_loaded_again_after_redis_forgets_it(name):
    async def scenario():
        pipe = RedisPipe(settings.REDIS_URL)
        script = pipe.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        before = await script(keys=[name], args=[5])
        await pipe.call("SCRIPT", "FLUSH")
        after = await script(keys=[name], args=[2])
        await pipe.close()
        return before, after

    assert run(scenario()) == (5, 7)


def test_an_outage_fails_fast_and_the_next_command_reconnects(tmp_path):
    server = DisposableRedis(tmp_path).start()

    async def scenario():
        pipe = RedisPipe(server.url, timeout=1, connect_timeout=1)
        assert await pipe.call("PING") == b"PONG"
        server.stop()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await pipe.call("PING")
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await pipe.call("PING")  # still down: refused at connect, not hung
        server.start()
        reply = await pipe.call("PING")
        await pipe.close()
        return reply

    try:
        assert run(scenario()) == b"PONG"
    finally:
        server.stop()


def test_a_command_that_never_answers_times_out_and_the_connection_is_replaced(name):
    async def scenario():
        pipe = RedisPipe(settings.REDIS_URL, timeout=0.5)
        with pytest.raises(redis.TimeoutError):
            await pipe.call("BLPOP", name, 5)  # blocks the connection longer than the timeout
        reply = await pipe.call("PING")
        await pipe.close()
        return reply

    assert run(scenario()) == b"PONG"


def test_callers_waiting_on_a_connection_that_dies_fail_and_later_replies_stay_in_step(tmp_path):
    """A server at its client limit accepts, answers an error and closes: every caller fails at
    once (none is left queued on the dead connection), and on the next connection each caller
    gets its own reply."""
    server = DisposableRedis(tmp_path).start()
    holder = server.client()
    holder.config_set("maxclients", 1)
    holder.ping()  # the one allowed connection is taken

    async def scenario():
        pipe = RedisPipe(server.url, timeout=2, connect_timeout=1)
        first = await asyncio.wait_for(
            asyncio.gather(*(pipe.call("INCR", "n") for _ in range(20)), return_exceptions=True), 5
        )
        holder.close()  # frees the slot
        await asyncio.sleep(0.2)
        second = await asyncio.wait_for(asyncio.gather(*(pipe.call("INCR", "n") for _ in range(20))), 5)
        await pipe.close()
        return first, second

    try:
        first, second = run(scenario())
    finally:
        server.stop()
    assert all(isinstance(outcome, redis.RedisError) for outcome in first)
    assert sorted(second) == list(range(1, 21))


def test_a_loading_server_raises_redis_py_s_class_not_a_plain_response_error():
    import hiredis

    from gateway.redis_pipe import error_from_reply

    assert isinstance(error_from_reply(hiredis.ReplyError("LOADING Redis is loading")), redis.BusyLoadingError)
    assert isinstance(error_from_reply(hiredis.ReplyError("READONLY You can't write")), redis.ReadOnlyError)
    assert type(error_from_reply(hiredis.ReplyError("ERR unknown command"))) is redis.ResponseError

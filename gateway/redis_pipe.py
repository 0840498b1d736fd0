"""A pipelined Redis connection for the gateway's hot path.

Every admitted request runs one Lua script. Through redis-py's pool, each call takes a
connection, packs in Python, writes with its own system call and waits; at concurrency 16
that cost about a third of a worker's CPU. Here all coroutines share one connection: commands
issued in the same event-loop turn go out in one write, replies come back in order (Redis
answers a connection's commands in the order sent) and hiredis parses them in C.

Errors surface as redis-py's exception classes, so callers handle outages the same way for
both clients: a lost or timed-out connection fails every command in flight with
`redis.ConnectionError` / `redis.TimeoutError`, and the next command connects again.

Behind Sentinel (a `redis+sentinel://` URL, gateway/redis_url.py), each connection first asks
the Sentinels which server is the primary; a READONLY reply (the server was demoted by a
failover) drops the connection, so the next command finds the new primary. A Cluster gets one
of these connections per primary (gateway/redis_cluster_pipe.py).

With `min_replicas`, every command is followed in the same write by WAIT: its reply says how
many replicas hold every write sent so far, and fewer than `min_replicas` within
`replica_timeout_ms` fails the command with NotReplicated (a RedisError, so callers treat it
as Redis not answering). Redis replicates asynchronously; without this, a write the primary
acknowledged just before it died is lost with it at the failover.
"""

import asyncio
import hashlib
import ssl
import time
from collections import deque
from typing import Any, Protocol

import hiredis
import redis.asyncio as redis
import redis.exceptions as redis_errors
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from .redis_url import RedisLocation, async_sentinel, parse_redis_url

Reply = Any

# Redis error replies by their first word, as redis-py raises them, so a server that is loading,
# read-only after a failover or out of memory is told apart from a bad command.
ERROR_CLASSES: dict[str, type[redis.RedisError]] = {
    "LOADING": redis_errors.BusyLoadingError,
    "READONLY": redis_errors.ReadOnlyError,
    "MASTERDOWN": redis_errors.MasterDownError,
    "OOM": redis_errors.OutOfMemoryError,
    "NOSCRIPT": redis_errors.NoScriptError,
    "NOAUTH": redis_errors.AuthenticationError,
    "WRONGPASS": redis_errors.AuthenticationError,
    "NOPERM": redis_errors.NoPermissionError,
    "TRYAGAIN": redis_errors.TryAgainError,
    "CLUSTERDOWN": redis_errors.ClusterDownError,
    "CROSSSLOT": redis_errors.ClusterCrossSlotError,
}
# Cluster redirections: redis-py's classes take the reply without its first word.
REDIRECTIONS: dict[str, type[redis_errors.ResponseError]] = {
    "MOVED": redis_errors.MovedError,
    "ASK": redis_errors.AskError,
}


class NotReplicated(redis_errors.RedisError):
    """Fewer replicas than asked for acknowledged a write in time."""


def error_from_reply(reply: hiredis.ReplyError) -> redis.RedisError:
    message = str(reply)
    code, _, rest = message.partition(" ")
    if code in REDIRECTIONS:
        return REDIRECTIONS[code](rest)
    return ERROR_CLASSES.get(code, redis.ResponseError)(message)


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: "RedisPipe"):
        self.pipe = pipe
        self.reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pipe.pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending or self.pipe.protocol is not self:  # out of step, or an old connection
                self.pipe.abort(redis.ConnectionError("Redis sent an unexpected reply"))
                return
            future = pending.popleft()[1]
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe.protocol is self:  # not a connection the pipe already dropped
            self.pipe.abort(redis.ConnectionError(f"Redis connection lost: {exc or 'closed'}"))


def pack(args: tuple[bytes | str | int | float, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class RedisPipe:
    """One shared, pipelined connection (see the module docstring). Use `call` for a command,
    `script` for a registered Lua script."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        location: RedisLocation | None = None,
        min_replicas: int = 0,
        replica_timeout_ms: int = 100,
    ):
        """`url` as gateway/redis_url.py reads it (not a Cluster: see ClusterPipe); `location`
        instead, for one server of a parsed location (a Cluster node)."""
        self.min_replicas = min_replicas
        self._wait = pack(("WAIT", min_replicas, replica_timeout_ms)) if min_replicas > 0 else b""
        self.location = location or parse_redis_url(url)
        self.options: dict[str, Any] = (
            dict(parse_url(url)) if self.location.mode == "single" and location is None else {}
        )
        self.sentinel = (
            async_sentinel(self.location, connect_timeout=connect_timeout) if self.location.mode == "sentinel" else None
        )
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.pending: deque[tuple[float, asyncio.Future[Reply]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.protocol: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    # Connection ----------------------------------------------------------------------------

    async def _server(self) -> dict[str, Any]:
        """redis-py's connection options for the server to connect to now."""
        if self.options:
            return self.options
        location = self.location
        if self.sentinel is not None:
            try:
                host, port = await asyncio.wait_for(
                    self.sentinel.discover_master(location.service), self.connect_timeout
                )
            except TimeoutError:
                raise redis.TimeoutError("Timed out asking the Sentinels for the primary") from None
        else:
            host, port = location.nodes[0]
        return {
            "host": host,
            "port": port,
            "db": location.db,
            "username": location.username,
            "password": location.password,
            **({"connection_class": SSLConnection} if location.tls else {}),
        }

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        options = await self._server()
        protocol = _Protocol(self)
        cls = options.get("connection_class")
        if cls is UnixDomainSocketConnection:
            connecting = loop.create_unix_connection(lambda: protocol, options["path"])
        else:
            tls = ssl.create_default_context() if cls is SSLConnection else None
            connecting = loop.create_connection(
                lambda: protocol, options.get("host", "localhost"), options.get("port", 6379), ssl=tls
            )
        try:
            transport, _ = await asyncio.wait_for(connecting, self.connect_timeout)
        except TimeoutError:
            raise redis.TimeoutError("Timed out connecting to Redis") from None
        except OSError as error:
            raise redis.ConnectionError(f"Cannot connect to Redis: {error}") from None
        self.transport, self.protocol = transport, protocol
        self._watch()
        handshake: list[tuple[str | int, ...]] = []
        if options.get("password"):
            credentials = [options["username"]] if options.get("username") else []
            handshake.append(("AUTH", *credentials, options["password"]))
        if options.get("db"):
            handshake.append(("SELECT", options["db"]))
        for reply in await asyncio.gather(*(self._send(pack(command)) for command in handshake)):
            if isinstance(reply, hiredis.ReplyError):
                self.abort(redis.ConnectionError(f"Redis refused the connection set-up: {reply}"))
                raise redis.ConnectionError(f"Redis refused the connection set-up: {reply}")

    async def _ensure_connected(self) -> None:
        if self.transport is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    def abort(self, error: Exception) -> None:
        """Drop the connection and fail every command in flight with `error`."""
        transport, self.transport, self.protocol = self.transport, None, None
        self._outgoing.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self.pending = self.pending, deque()
        for _, future in pending:
            if not future.done():
                future.set_exception(error)
        if transport is not None:
            transport.abort()

    def _watch(self) -> None:
        """Fail the connection when its oldest command waits longer than the timeout."""
        if self.pending and time.monotonic() - self.pending[0][0] > self.timeout:
            self.abort(redis.TimeoutError("Timed out waiting for Redis"))
            return
        if self.transport is not None:
            self._watchdog = asyncio.get_running_loop().call_later(min(1.0, self.timeout / 2), self._watch)

    async def close(self) -> None:
        self.abort(redis.ConnectionError("closed"))

    # Commands ------------------------------------------------------------------------------

    def _send(self, packed: bytes) -> "asyncio.Future[Reply]":
        """Queue a command for this loop turn's write; its reply resolves the future. Only on a
        live connection: a future queued without one would take the next connection's replies."""
        if self.transport is None:
            raise redis.ConnectionError("Redis connection lost")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self.pending.append((time.monotonic(), future))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(packed)
        return future

    def _flush(self) -> None:
        if self.transport is not None and self._outgoing:
            self.transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _send_wait(self) -> "asyncio.Future[Reply] | None":
        """WAIT after the commands just queued, when replicas must confirm them."""
        return self._send(self._wait) if self._wait else None

    async def _replicated(self, waiting: "asyncio.Future[Reply] | None", failed: bool) -> None:
        if waiting is None:
            return
        if failed:  # the command's error is what the caller hears about
            waiting.cancel()
            return
        acked = await waiting
        if isinstance(acked, hiredis.ReplyError):
            raise self._failed(error_from_reply(acked))
        if int(acked) < self.min_replicas:
            raise NotReplicated(f"{acked} of {self.min_replicas} replicas acknowledged the write in time")

    async def call(self, *args: bytes | str | int | float) -> Reply:
        """Send one command and wait for its reply; a Redis error reply raises its redis-py class."""
        await self._ensure_connected()
        sent = self._send(pack(args))  # raises if the connection was lost meanwhile
        waiting = self._send_wait()
        try:
            reply = await sent
        except BaseException:
            await self._replicated(waiting, failed=True)
            raise
        failed = isinstance(reply, hiredis.ReplyError)
        await self._replicated(waiting, failed)
        if failed:
            raise self._failed(error_from_reply(reply))
        return reply

    def _failed(self, error: redis.RedisError) -> redis.RedisError:
        """A reply saying this server is no longer the primary drops the connection, so the next
        command connects to the new one."""
        if isinstance(error, redis_errors.ReadOnlyError | redis_errors.MasterDownError):
            self.abort(redis.ConnectionError(f"Redis is no longer the primary: {error}"))
        return error

    async def call_many(self, commands: list[tuple[bytes | str | int | float, ...]]) -> list[Reply]:
        """Send commands in one write and wait for all replies; the first error reply raises."""
        await self._ensure_connected()
        futures = [self._send(pack(command)) for command in commands]
        waiting = self._send_wait()
        replies = await asyncio.gather(*futures, return_exceptions=True)
        failed = any(isinstance(reply, hiredis.ReplyError | BaseException) for reply in replies)
        await self._replicated(waiting, failed)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise self._failed(error_from_reply(reply))
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def call_packed(self, commands: list[bytes], *, key: str = "") -> list[Reply]:
        """`call_many` for commands already in RESP (see `pack`): one write, and the replies in
        order; the first error reply raises. Replies come in order, so waiting for the last
        one waits for all. `key`: one key of the commands, which a Cluster routes by."""
        await self._ensure_connected()
        futures = [self._send(command) for command in commands]
        waiting = self._send_wait() if futures else None
        if futures:
            await asyncio.wait((futures[-1],))  # the connection lost fails every pending future
        replies: list[Reply] = []
        failure: Exception | None = None
        for future in futures:  # every result is read, so that no failure goes unretrieved
            try:
                reply = future.result()  # the connection error, if it was lost
            except Exception as error:  # raised below, once
                failure = failure or error
                continue
            if isinstance(reply, hiredis.ReplyError):
                failure = failure or self._failed(error_from_reply(reply))
            replies.append(reply)
        await self._replicated(waiting, failure is not None)
        if failure is not None:
            raise failure
        return replies

    def script(self, source: str) -> "PipeScript":
        return PipeScript(self, source)


class Caller(Protocol):
    async def call(self, *args: bytes | str | int | float) -> Reply: ...


class PipeScript:
    """A Lua script run by its SHA-1 (EVALSHA), loaded with EVAL when Redis does not know it."""

    def __init__(self, pipe: Caller, source: str):
        self.pipe, self.source = pipe, source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324  (Redis names scripts by SHA-1)

    async def __call__(self, keys: list[str], args: list[Any]) -> Reply:
        try:
            return await self.pipe.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await self.pipe.call("EVAL", self.source, len(keys), *keys, *args)

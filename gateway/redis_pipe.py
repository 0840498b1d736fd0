"""A pipelined Redis connection for the gateway's hot path.

Every admitted request runs one Lua script. Through redis-py's pool, each call takes a
connection, packs in Python, writes with its own system call and waits; at concurrency 16
that cost about a third of a worker's CPU. Here all coroutines share one connection: commands
issued in the same event-loop turn go out in one write, replies come back in order (Redis
answers a connection's commands in the order sent) and hiredis parses them in C.

Errors surface as redis-py's exception classes, so callers handle outages the same way for
both clients: a lost or timed-out connection fails every command in flight with
`redis.ConnectionError` / `redis.TimeoutError`, and the next command connects again.
"""

import asyncio
import hashlib
import ssl
import time
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as redis
import redis.exceptions as redis_errors
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

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
}


def error_from_reply(reply: hiredis.ReplyError) -> redis.RedisError:
    message = str(reply)
    return ERROR_CLASSES.get(message.split(" ", 1)[0], redis.ResponseError)(message)


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

    def __init__(self, url: str, *, timeout: float = 5.0, connect_timeout: float = 2.0):
        self.options = parse_url(url)
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.pending: deque[tuple[float, asyncio.Future[Reply]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.protocol: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    # Connection ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        options = self.options
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

    async def call(self, *args: bytes | str | int | float) -> Reply:
        """Send one command and wait for its reply; a Redis error reply raises its redis-py class."""
        await self._ensure_connected()
        reply = await self._send(pack(args))  # raises if the connection was lost meanwhile
        if isinstance(reply, hiredis.ReplyError):
            raise error_from_reply(reply)
        return reply

    async def call_many(self, commands: list[tuple[bytes | str | int | float, ...]]) -> list[Reply]:
        """Send commands in one write and wait for all replies; the first error reply raises."""
        await self._ensure_connected()
        replies = await asyncio.gather(*(self._send(pack(command)) for command in commands), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise error_from_reply(reply)
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def call_packed(self, commands: list[bytes]) -> list[Reply]:
        """`call_many` for commands already in RESP (see `pack`): one write, and the replies in
        order; the first error reply raises. Replies come in order, so waiting for the last
        one waits for all."""
        await self._ensure_connected()
        futures = [self._send(command) for command in commands]
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
                failure = failure or error_from_reply(reply)
            replies.append(reply)
        if failure is not None:
            raise failure
        return replies

    def script(self, source: str) -> "PipeScript":
        return PipeScript(self, source)


class PipeScript:
    """A Lua script run by its SHA-1 (EVALSHA), loaded with EVAL when Redis does not know it."""

    def __init__(self, pipe: RedisPipe, source: str):
        self.pipe, self.source = pipe, source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324  (Redis names scripts by SHA-1)

    async def __call__(self, keys: list[str], args: list[Any]) -> Reply:
        try:
            return await self.pipe.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await self.pipe.call("EVAL", self.source, len(keys), *keys, *args)

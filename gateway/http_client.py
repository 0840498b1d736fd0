"""A small HTTP/1.1 client for the calls to providers: keep-alive connections pooled per
origin, request bodies sent as given, answers read whole or line by line (server-sent events).

Why not aiohttp: on the gateway's hot path its client was about a quarter of a worker's CPU
(request and response objects, header multidicts, cookie jars, tracing hooks, timers), for
features a provider call never uses. Here a request is one formatted write, and httptools (the
parser uvicorn uses) reads the answer, chunked or not.

What it does: `POST`/`GET` over http or https (TLS verified against the system's CAs), a
bounded number of connections per origin, idle connections closed after KEEPALIVE_SECONDS,
gzip or deflate answers decoded (we ask for none), one deadline per request covering connect,
answer and body. A connection goes back to the pool only after its answer was read to the end
and both sides keep it alive. No redirects, cookies, proxies or retries: a failed call is the
caller's to retry, on another deployment if the SLA policy says so.
"""

import asyncio
import contextlib
import ssl
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote, urlencode, urlsplit

import httptools

KEEPALIVE_SECONDS = 30.0
CONNECTIONS_PER_ORIGIN = 500
MAX_ANSWER_BYTES = 256 * 1024 * 1024  # a whole answer read at once; far beyond any real one
HIGH_WATER = 1024 * 1024  # unread bytes at which the socket is paused


class HttpClientError(ConnectionError):
    """The provider could not be reached, or broke the connection or the protocol."""


Origin = tuple[str, str, int]  # scheme, host, port


@dataclass
class _Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    headers_done: bool = False
    complete: bool = False
    keep_alive: bool = False
    error: Exception | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, origin: Origin):
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer = _Answer()
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.closed = False
        self.idle_since = 0.0
        self._header_name = b""
        self._interim = False  # reading a 1xx answer, which the final one follows

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpClientError("the provider switched protocols"))
        except httptools.HttpParserError as error:
            self._fail(HttpClientError(f"the provider's answer is not valid HTTP ({error})"))
        self._wake()
        if len(self.answer.body) > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self.answer
        if not answer.complete and answer.error is None:
            delimited_by_close = "content-length" not in answer.headers and not self._chunked()
            if answer.headers_done and delimited_by_close and exc is None:
                answer.complete = True  # an answer delimited by the end of the connection (not a reset)
            else:
                reason = f": {exc}" if exc else ""
                answer.error = HttpClientError(f"the provider closed the connection{reason}")
        self._wake()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._header_name = name
            self.answer.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        else:  # a header value continued in a second chunk of data
            key = self._header_name.decode("latin-1").lower()
            self.answer.headers[key] += value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the final answer follows
            self._interim = True
            self.answer.headers = {}
            return
        self.answer.status = status
        self.answer.keep_alive = self.parser.should_keep_alive()
        self.answer.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.answer.body += body

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.answer.complete = True

    # Helpers

    def _chunked(self) -> bool:
        return "chunked" in self.answer.headers.get("transfer-encoding", "").lower()

    def _fail(self, error: Exception) -> None:
        self.answer.error = error
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, deadline: float) -> None:
        """Until more of the answer arrived (or the connection ended), or the deadline."""
        self.resume()
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)  # cheaper than asyncio.timeout_at per wait
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def start(self) -> None:
        """Ready for the next request on this connection."""
        self.answer = _Answer()
        self.parser = httptools.HttpResponseParser(self)

    def resume(self) -> None:
        """Read again (paused at HIGH_WATER), so that an idle connection notices its close."""
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


def _expire(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """One answer. Read it with `read` or `readline`; then `release` (or `close`)."""

    def __init__(self, pool: "_Pool", connection: _Connection, deadline: float):
        self._pool, self._connection, self._deadline = pool, connection, deadline
        answer = connection.answer
        self.status, self.headers = answer.status, answer.headers
        self._offset = 0  # of the first unread byte in answer.body
        self._done = False
        self._decoder: zlib._Decompress | None = None
        self._decoded = bytearray()  # decompressed, not yet read as lines
        encoding = answer.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by its header
        elif encoding != "identity":
            self.close()
            raise HttpClientError(f"the provider answered in an encoding we did not ask for ({encoding})")
        # Set by callers that read ahead (gateway/upstream.py).
        self.prefetched: list[bytes] = []
        self.first_event_after = 0.0

    async def _more(self) -> bool:
        """Wait for more of the body; False at its end. Raises on a broken connection."""
        connection = self._connection
        answer = connection.answer
        if answer.error is not None:
            raise answer.error
        if answer.complete:
            return False
        await connection.wait(self._deadline)
        if answer.error is not None:
            raise answer.error
        return True

    def _decode(self, data: bytes, final: bool = False) -> bytes:
        if self._decoder is None:
            return data
        try:
            decoded = self._decoder.decompress(data)
            if final:
                decoded += self._decoder.flush()
        except zlib.error as error:
            raise HttpClientError(f"the provider's compressed answer is corrupt ({error})") from None
        if final and not self._decoder.eof:
            raise HttpClientError("the provider's compressed answer is cut short")
        return decoded

    def _take(self) -> bytes:
        """The body received and not yet taken, decoded; what was taken is dropped now and then."""
        body = self._connection.answer.body
        data = bytes(body[self._offset :])
        self._offset = len(body)
        if self._offset > HIGH_WATER // 2:
            del body[: self._offset]
            self._offset = 0
        return self._decode(data)

    async def read(self) -> bytes:
        """The whole body (the connection then goes back to the pool)."""
        answer = self._connection.answer
        try:
            while await self._more():
                if len(answer.body) > MAX_ANSWER_BYTES:
                    raise HttpClientError(f"the provider's answer is larger than {MAX_ANSWER_BYTES:,} bytes")
            body = self._decode(bytes(answer.body[self._offset :]), final=True)
        except BaseException:
            self.close()
            raise
        self._offset = len(answer.body)
        self.release()
        return body

    async def readline(self) -> bytes:
        """The next line, with its newline; the last line may have none; b"" at the end."""
        if self._decoder is not None:
            return await self._readline_decoded()
        answer = self._connection.answer
        while True:
            end = answer.body.find(b"\n", self._offset)
            if end >= 0:
                line = bytes(answer.body[self._offset : end + 1])
                self._offset = end + 1
                if self._offset > HIGH_WATER // 2:  # drop what was read, now and then
                    del answer.body[: self._offset]
                    self._offset = 0
                return line
            if not await self._more():
                line = bytes(answer.body[self._offset :])
                self._offset = len(answer.body)
                return line

    async def read_chunk(self) -> bytes:
        """The next bytes that arrived (a binary stream's pieces, as AWS event streams are);
        b"" at the end. Does not mix with readline on one answer."""
        decoded = bytes(self._decoded)
        self._decoded.clear()
        while True:
            data = decoded + self._take()
            if data:
                return data
            if not await self._more():
                return self._take() + self._decode(b"", final=True)

    async def _readline_decoded(self) -> bytes:
        """readline of a compressed answer: lines are found in what was decompressed."""
        decoded = self._decoded
        while True:
            end = decoded.find(b"\n")
            if end >= 0:
                line = bytes(decoded[: end + 1])
                del decoded[: end + 1]
                return line
            decoded += self._take()
            if decoded.find(b"\n") >= 0:
                continue
            if not await self._more():
                decoded += self._take() + self._decode(b"", final=True)
                line = bytes(decoded)
                decoded.clear()
                return line

    def __aiter__(self) -> "Response":
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def release(self) -> None:
        """Done with the answer: the connection is reused if it was read to the end."""
        if self._done:
            return
        self._done = True
        connection = self._connection
        answer = connection.answer
        if answer.complete and answer.keep_alive and answer.error is None and not connection.closed:
            self._pool.put_back(connection)
        else:
            self._pool.discard(connection)

    def close(self) -> None:
        """Done, whatever was read: the connection is closed."""
        if not self._done:
            self._done = True
            self._pool.discard(self._connection)

    def __del__(self) -> None:
        # A safety net: an answer dropped unread (a stream whose client left before it began)
        # must not keep its connection and its place in the pool for ever.
        if not self._done:
            self._done = True
            with contextlib.suppress(Exception):  # the loop may be gone at interpreter exit
                self._pool.discard(self._connection)


class _Pool:
    """The connections to one origin: idle ones, newest last, and a bound on how many exist."""

    def __init__(self, origin: Origin, ssl_context: ssl.SSLContext | None):
        self.origin, self.ssl_context = origin, ssl_context
        self.idle: deque[_Connection] = deque()
        self.slots = asyncio.Semaphore(CONNECTIONS_PER_ORIGIN)

    async def connection(self, deadline: float) -> _Connection:
        if self.slots.locked():
            async with asyncio.timeout_at(deadline):
                await self.slots.acquire()
        else:
            await self.slots.acquire()  # returns at once
        now = time.monotonic()
        while self.idle and now - self.idle[0].idle_since >= KEEPALIVE_SECONDS:  # the oldest first
            expired = self.idle.popleft()
            if expired.transport is not None:
                expired.transport.close()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_SECONDS:
                connection.start()
                return connection
            if connection.transport is not None:
                connection.transport.close()
        _scheme, host, port = self.origin
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _transport, connection = await loop.create_connection(
                    lambda: _Connection(self.origin),
                    host,
                    port,
                    ssl=self.ssl_context,
                    server_hostname=host if self.ssl_context else None,
                )
        except BaseException:
            self.slots.release()
            raise
        return connection

    def put_back(self, connection: _Connection) -> None:
        connection.resume()
        connection.idle_since = time.monotonic()
        self.idle.append(connection)
        self.slots.release()

    def discard(self, connection: _Connection) -> None:
        if connection.transport is not None:
            connection.transport.close()
        self.slots.release()


class HttpClient:
    """`ssl_context`: how https origins are verified (default: the system's CAs)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pools: dict[Origin, _Pool] = {}
        self._ssl = ssl_context
        # (method, url, query) -> the pool, and the request line with the Host header
        self._targets: dict[tuple[str, str, str], tuple[_Pool, str]] = {}

    def _target(self, method: str, url: str, params: dict[str, str] | None) -> tuple[_Pool, str]:
        """The pool and the request line and Host header for a URL, parsed once per URL."""
        query = urlencode(params) if params else ""
        key = (method, url, query)
        found = self._targets.get(key)
        if found is not None:
            return found
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpClientError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        pool = self._pool(parts.scheme, parts.hostname, port)
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")  # a space in a model name, say
        full_query = "&".join(filter(None, (parts.query, query)))
        if full_query:
            target += "?" + full_query
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # an IPv6 literal
        if parts.port is not None:
            host += f":{parts.port}"
        found = (pool, f"{method} {target} HTTP/1.1\r\nHost: {host}")
        if len(self._targets) > 10_000:  # URLs come from the config: a bound, not a cache policy
            self._targets.clear()
        self._targets[key] = found
        return found

    def _pool(self, scheme: str, host: str, port: int) -> _Pool:
        origin = (scheme, host, port)
        pool = self._pools.get(origin)
        if pool is None:
            if scheme == "https" and self._ssl is None:
                self._ssl = ssl.create_default_context()
            pool = self._pools[origin] = _Pool(origin, self._ssl if scheme == "https" else None)
        return pool

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes = b"",
        params: dict[str, str] | None = None,
        connect_timeout: float,
        answer_timeout: float,
        total_timeout: float,
    ) -> Response:
        """Send a request and wait for the answer's status and headers: within `connect_timeout`
        for the connection, `answer_timeout` for the headers, and `total_timeout` for
        everything including reading the body. TimeoutError or HttpClientError if not."""
        pool, request_line = self._target(method, url, params)
        head = [request_line, f"Content-Length: {len(body)}"]
        head += (f"{name}: {value}" for name, value in headers.items())
        if any("\r" in line or "\n" in line for line in head[1:]):
            raise HttpClientError("a request header holds a line break")
        head.append("Accept-Encoding: identity\r\n\r\n")
        try:
            request = "\r\n".join(head).encode("latin-1") + body
        except UnicodeEncodeError:
            raise HttpClientError("a request header holds characters HTTP cannot carry") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_timeout
        connection = await pool.connection(min(deadline, loop.time() + connect_timeout))
        try:
            assert connection.transport is not None  # noqa: S101  (connected above)
            connection.transport.write(request)
            answer = connection.answer
            answer_deadline = min(deadline, loop.time() + answer_timeout)
            while not answer.headers_done:
                if answer.error is not None:
                    raise answer.error
                await connection.wait(answer_deadline)
        except BaseException:
            pool.discard(connection)
            raise
        return Response(pool, connection, deadline)

    async def close(self) -> None:
        for pool in self._pools.values():
            while pool.idle:
                connection = pool.idle.pop()
                if connection.transport is not None:
                    connection.transport.close()
        self._pools.clear()
        self._targets.clear()

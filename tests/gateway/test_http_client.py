"""The gateway's HTTP/1.1 client (gateway/http_client.py) against real servers on 127.0.0.1.

Each test runs a raw asyncio server written here, which reads request heads and bodies by
Content-Length and writes exact bytes, so the test controls the wire: chunk boundaries, delays,
closes and resets. The client is used as the gateway uses it, never mocked. Every scenario runs
under both event loops the project uses: asyncio's (the tests, the control plane) and uvloop
(the gateway's workers).

Tests marked `# Regression` reproduce defects found while these tests were written (each failed
against the first version of the client); their comments describe the behaviour that was fixed.
"""

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import os
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import http_client
from gateway.http_client import HttpClient, HttpClientError

SCENARIO_SECONDS = 5.0  # a hard bound on every test's event loop


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Runs one scenario, client and server, in one event loop of the given kind."""

    def runner(coroutine):
        bounded = asyncio.wait_for(coroutine, SCENARIO_SECONDS)
        return asyncio.run(bounded) if request.param == "asyncio" else uvloop.run(bounded)

    return runner


@pytest.fixture
def two_slots(monkeypatch):
    """Two connections per origin (read when a client creates its pool for an origin)."""
    monkeypatch.setattr(http_client, "CONNECTIONS_PER_ORIGIN", 2)


@pytest.fixture
def one_slot(monkeypatch):
    monkeypatch.setattr(http_client, "CONNECTIONS_PER_ORIGIN", 1)


# The server side -----------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    head: list[str]  # the request line and header lines, in order, as sent
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


@dataclass
class Peer:
    """One accepted connection, as the server sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: "Server"
    received: bytearray = field(default_factory=bytearray)
    requests: list[Request] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the client closed its side

    async def request(self) -> Request | None:
        """The next request, or None when the client closed the connection instead."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            self.received += getattr(error, "partial", b"")
            self.ended.set()
            return None
        self.received += head
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        request = Request(method, target, lines, b"")
        request.body = await self.reader.readexactly(int(request.header("content-length") or 0))
        self.received += request.body
        self.requests.append(request)
        self.server.requests.append(request)
        return request

    async def until_closed_by_client(self) -> bytes:
        """Whatever else the client sends, until it closes the connection."""
        rest = await self.reader.read()  # to the end of the stream
        self.received += rest
        self.ended.set()
        return rest

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Close with a TCP reset (RST) instead of an orderly end (FIN)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    """A raw HTTP server on 127.0.0.1: `handler(peer)` runs for each accepted connection."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self.handler, self.ssl_context, self.host = handler, ssl_context, host
        self.peers: list[Peer] = []
        self.requests: list[Request] = []

    @property
    def connections(self) -> int:
        return len(self.peers)

    def url(self, path: str = "/", scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    async def __aenter__(self) -> "Server":
        self._server = await asyncio.start_server(self._accept, self.host, 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc) -> None:
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, self)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            peer.ended.set()


def answer(body: bytes = b"ok", status: str = "200 OK", headers: tuple[str, ...] = (), version: str = "1.1") -> bytes:
    """An answer with a Content-Length."""
    head = [f"HTTP/{version} {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def answering(respond: Callable[[Request], bytes]) -> Handler:
    """A keep-alive server: `respond(request)` is written for each request, until the client leaves."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(respond(request))

    return handler


def echo(request: Request) -> bytes:
    return answer(f"{request.method} {request.target} {len(request.body)}".encode())


# The client side -----------------------------------------------------------------------------


async def call(
    client: HttpClient,
    url: str,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    connect_timeout: float = 2.0,
    answer_timeout: float = 2.0,
    total_timeout: float = 3.0,
):
    return await client.request(
        method,
        url,
        headers=headers if headers is not None else {},
        body=body,
        params=params,
        connect_timeout=connect_timeout,
        answer_timeout=answer_timeout,
        total_timeout=total_timeout,
    )


async def fetch_body(client: HttpClient, url: str, **options) -> bytes:
    response = await call(client, url, **options)
    assert response.status == 200
    return await response.read()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# 1. Content-Length answers and keep-alive ----------------------------------------------------


def test_a_content_length_answer_is_read_whole_and_sequential_requests_share_one_connection(run):
    async def scenario():
        async with Server(answering(lambda request: answer(b"x" * 5000 + request.body))) as server:
            client = HttpClient()
            first = await fetch_body(client, server.url("/a"), body=b"one")
            second = await fetch_body(client, server.url("/b"), body=b"two")
            third = await fetch_body(client, server.url("/c"), method="GET")
            await client.close()
            return first, second, third, server.connections, [r.target for r in server.requests]

    first, second, third, connections, targets = run(scenario())
    assert first == b"x" * 5000 + b"one"
    assert second == b"x" * 5000 + b"two"
    assert third == b"x" * 5000
    assert targets == ["/a", "/b", "/c"]
    assert connections == 1


def test_an_answer_trickled_byte_by_byte_is_parsed_whole(run):
    wire = answer(b'{"id": "chatcmpl-1"}', headers=("Content-Type: application/json", "X-Request-Id: abc-123"))

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            for index in range(len(wire)):
                await peer.send(wire[index : index + 1])
                if index % 8 == 0:
                    await asyncio.sleep(0.001)

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            response = await call(client, server.url())
            body = await response.read()
            again = await fetch_body(client, server.url())
            await client.close()
            return response.status, response.headers, body, again, server.connections

    status, headers, body, again, connections = run(scenario())
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "abc-123"
    assert body == again == b'{"id": "chatcmpl-1"}'
    assert connections == 1


def test_an_answer_larger_than_the_read_ahead_bound_is_read_whole_and_its_connection_kept(run):
    big = os.urandom(3 * http_client.HIGH_WATER + 12345)

    async def scenario():
        async with Server(answering(lambda request: answer(big if request.target == "/big" else b"small"))) as server:
            client = HttpClient()
            body = await fetch_body(client, server.url("/big"))
            after = await fetch_body(client, server.url("/small"))
            await client.close()
            return body, after, server.connections

    body, after, connections = run(scenario())
    assert body == big
    assert after == b"small"
    assert connections == 1


def test_an_error_status_is_returned_with_its_headers_and_body(run):
    wire = answer(b'{"error": {"message": "slow down"}}', "429 Too Many Requests", ("Retry-After: 7",))

    async def scenario():
        async with Server(answering(lambda _request: wire)) as server:
            client = HttpClient()
            response = await call(client, server.url())
            body = await response.read()
            await client.close()
            return response.status, response.headers.get("retry-after"), body

    assert run(scenario()) == (429, "7", b'{"error": {"message": "slow down"}}')


def test_close_closes_the_idle_connections(run):
    async def scenario():
        async with Server(answering(echo)) as server:
            client = HttpClient()
            await asyncio.gather(*(fetch_body(client, server.url()) for _ in range(3)))
            await client.close()
            await until(lambda: all(peer.ended.is_set() for peer in server.peers))
            return server.connections

    assert run(scenario()) == 3


# 2. Chunked answers read line by line --------------------------------------------------------


def test_a_chunked_event_stream_is_read_line_by_line_as_it_arrives_and_its_connection_is_reused(run):
    async def scenario():
        first_line_read = asyncio.Event()

        async def handler(peer: Peer) -> None:
            while (request := await peer.request()) is not None:
                if request.target != "/stream":
                    await peer.send(answer(b"after"))
                    continue
                await peer.send(CHUNKED_HEAD + chunk(b"data: on"))
                await asyncio.sleep(0.02)
                await peer.send(chunk(b"e\n\ndata: two\n"))
                # The rest is sent only once the client has the first line: a client that
                # waited for the whole answer would never get it.
                await asyncio.wait_for(first_line_read.wait(), 2)
                await asyncio.sleep(0.02)
                await peer.send(chunk(b"\ndata: [DONE]\n\n"))
                await asyncio.sleep(0.02)
                await peer.send(LAST_CHUNK)

        async with Server(handler) as server:
            client = HttpClient()
            response = await call(client, server.url("/stream"))
            first = await response.readline()
            first_line_read.set()
            rest = [line async for line in response]
            end = await response.readline()
            response.release()
            after = await fetch_body(client, server.url("/next"))
            await client.close()
            return response.headers, first, rest, end, after, server.connections

    headers, first, rest, end, after, connections = run(scenario())
    assert headers["transfer-encoding"] == "chunked"
    assert first == b"data: one\n"
    assert rest == [b"\n", b"data: two\n", b"\n", b"data: [DONE]\n", b"\n"]
    assert end == b""
    assert after == b"after"
    assert connections == 1


async def all_lines(handler) -> list[bytes]:
    """Every line of the answer `handler` gives, read with `async for`."""
    async with Server(handler) as server:
        client = HttpClient()
        response = await call(client, server.url())
        received = [line async for line in response]
        response.release()
        await client.close()
        return received


def test_a_long_event_stream_is_read_line_by_line_without_losing_a_byte(run):
    lines = [f"data: {index:06d} ".encode() + os.urandom(400).hex().encode() + b"\n" for index in range(4000)]
    payload = b"".join(lines)  # about 3.2 MB, several times the read-ahead bound

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for start in range(0, len(payload), 70_001):  # chunk boundaries fall inside lines
            await peer.send(chunk(payload[start : start + 70_001]))
        await peer.send(LAST_CHUNK)
        await peer.until_closed_by_client()

    assert run(all_lines(handler)) == lines


def test_a_last_line_without_a_newline_is_returned_as_it_is(run):
    assert run(all_lines(answering(lambda _request: answer(b"first\nlast")))) == [b"first\n", b"last"]


# 3. Answers released or closed early ---------------------------------------------------------


def test_an_answer_released_before_its_end_closes_its_connection_and_the_next_request_opens_another(run):
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        if request.target == "/endless":
            await peer.send(CHUNKED_HEAD + chunk(b"data: first\n\n"))
            await peer.until_closed_by_client()  # more would follow; the client leaves first
        else:
            await peer.send(answer(b"fresh"))
            await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            response = await call(client, server.url("/endless"))
            line = await response.readline()
            response.release()  # the caller stops reading: the stream is cut
            await asyncio.wait_for(server.peers[0].ended.wait(), 2)
            after = await fetch_body(client, server.url("/after"))
            await client.close()
            return line, after, server.connections

    line, after, connections = run(scenario())
    assert line == b"data: first\n"
    assert after == b"fresh"
    assert connections == 2


def test_close_ends_the_connection_even_after_the_answer_was_read_whole(run):
    async def scenario():
        async with Server(answering(echo)) as server:
            client = HttpClient()
            response = await call(client, server.url("/one"))
            lines = [line async for line in response]
            response.close()
            await asyncio.wait_for(server.peers[0].ended.wait(), 2)
            after = await fetch_body(client, server.url("/two"))
            await client.close()
            return lines, after, server.connections

    assert run(scenario()) == ([b"POST /one 0"], b"POST /two 0", 2)


# 4. Answers that end their connection --------------------------------------------------------


@pytest.mark.parametrize("server_closes", [True, False], ids=["server-closes", "server-keeps-it-open"])
def test_an_answer_with_connection_close_is_read_whole_and_its_connection_not_reused(run, server_closes):
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(answer(b"bye " + request.target.encode(), headers=("Connection: close",)))
            if server_closes:
                peer.close()
                return

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            first = await fetch_body(client, server.url("/1"))
            second = await fetch_body(client, server.url("/2"))
            await client.close()
            return first, second, server.connections

    assert run(scenario()) == (b"bye /1", b"bye /2", 2)


def test_an_http_1_0_answer_is_read_whole_and_its_connection_not_reused(run):
    async def scenario():
        async with Server(answering(lambda _request: answer(b"old", version="1.0"))) as server:
            client = HttpClient()
            first = await fetch_body(client, server.url())
            second = await fetch_body(client, server.url())
            await client.close()
            return first, second, server.connections

    assert run(scenario()) == (b"old", b"old", 2)


def test_an_answer_delimited_by_the_end_of_the_connection_is_read_whole_and_its_connection_not_reused(run):
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        await asyncio.sleep(0.05)
        await peer.send(b"second part for " + request.target.encode())
        await asyncio.sleep(0.05)
        peer.close()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            first = await fetch_body(client, server.url("/1"))
            response = await call(client, server.url("/2"))
            second = [line async for line in response]
            response.release()
            await client.close()
            return first, second, server.connections

    first, second, connections = run(scenario())
    assert first == b"first part, second part for /1"
    assert second == [b"first part, second part for /2"]
    assert connections == 2


# 5. Idle connections closed by the server ----------------------------------------------------


def test_an_idle_connection_closed_by_the_server_is_replaced_by_a_new_one_transparently(run):
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        await peer.send(answer(f"{request.target} on connection {len(peer.server.peers)}".encode()))
        await asyncio.sleep(0.05)
        peer.close()  # the server's idle timeout: keep-alive was announced, yet it ends

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            first = await fetch_body(client, server.url("/1"))
            await until(lambda: server.peers[0].writer.is_closing())
            await asyncio.sleep(0.1)  # the close reaches the client while the connection is idle
            second = await fetch_body(client, server.url("/2"))
            await client.close()
            return first, second, server.connections

    assert run(scenario()) == (b"/1 on connection 1", b"/2 on connection 2", 2)


# 6. Connections that break -------------------------------------------------------------------


def test_a_connection_closed_mid_body_raises_a_connection_error_and_the_pool_stays_usable(run, one_slot):
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        if request.target == "/cut":
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await asyncio.sleep(0.05)
            peer.close()
        else:
            await peer.send(answer(b"whole"))
            await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            response = await call(client, server.url("/cut"))
            with pytest.raises(HttpClientError) as raised:
                await response.read()
            response.release()  # as callers do (gateway/upstream.py): the slot is given back
            # One slot per origin: this waits for ever if the broken connection kept it.
            after = await fetch_body(client, server.url("/after"), connect_timeout=1)
            await client.close()
            return raised.value, after, server.connections

    error, after, connections = run(scenario())
    assert isinstance(error, ConnectionError)
    assert "closed the connection" in str(error)
    assert after == b"whole"
    assert connections == 2


def test_a_stream_cut_mid_body_raises_from_readline_after_the_lines_that_arrived(run, one_slot):
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        if request.target == "/cut":
            await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\ndata: 2\n\nda"))
            await asyncio.sleep(0.05)
            peer.close()
        else:
            await peer.send(answer(b"whole"))
            await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            response = await call(client, server.url("/cut"))
            received = []
            with pytest.raises(HttpClientError):
                async for line in response:
                    received.append(line)
            response.release()
            after = await fetch_body(client, server.url("/after"), connect_timeout=1)
            await client.close()
            return received, after

    assert run(scenario()) == ([b"data: 1\n", b"\n", b"data: 2\n", b"\n"], b"whole")


def test_a_connection_closed_before_the_answer_raises_from_request(run):
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.close()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            with pytest.raises(HttpClientError, match="closed the connection"):
                await call(client, server.url())
            await client.close()

    run(scenario())


# 7. Timeouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_timeout", "total_timeout"), [(0.3, 5.0), (5.0, 0.3)], ids=["answer-timeout", "total-timeout"]
)
def test_headers_that_never_come_time_out_after_the_smaller_of_answer_and_total_timeout(
    run, one_slot, answer_timeout, total_timeout
):
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        if request.target == "/silent":
            await peer.until_closed_by_client()  # reads the request, never answers
        else:
            await peer.send(answer(b"answered"))
            await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await call(client, server.url("/silent"), answer_timeout=answer_timeout, total_timeout=total_timeout)
            elapsed = time.monotonic() - started
            # The timed-out connection is closed (the server sees its end) and its slot freed.
            await asyncio.wait_for(server.peers[0].ended.wait(), 2)
            after = await fetch_body(client, server.url("/after"), connect_timeout=1)
            await client.close()
            return elapsed, after

    elapsed, after = run(scenario())
    assert 0.25 <= elapsed < 1.0
    assert after == b"answered"


def test_a_stalled_body_is_bounded_by_total_timeout(run):
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await peer.until_closed_by_client()  # the other 90 bytes never come

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            started = time.monotonic()
            response = await call(client, server.url(), answer_timeout=5, total_timeout=0.3)
            headers_after = time.monotonic() - started
            with pytest.raises(TimeoutError):
                await response.read()
            elapsed = time.monotonic() - started
            response.close()
            await client.close()
            return headers_after, elapsed

    headers_after, elapsed = run(scenario())
    assert headers_after < 0.2
    assert 0.25 <= elapsed < 0.8


def test_a_stalled_stream_is_bounded_by_total_timeout_in_readline(run):
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
        await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            started = time.monotonic()
            response = await call(client, server.url(), total_timeout=0.3)
            lines = [await response.readline(), await response.readline()]
            with pytest.raises(TimeoutError):
                await response.readline()
            elapsed = time.monotonic() - started
            response.close()
            await client.close()
            return lines, elapsed

    lines, elapsed = run(scenario())
    assert lines == [b"data: 1\n", b"\n"]
    assert 0.25 <= elapsed < 0.8


# 8. Content encodings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)],
)
def test_an_encoded_answer_is_decoded(run, encoding, compress):
    document = b'{"choices": [{"message": {"content": "' + b"hello " * 2000 + b'"}}]}'

    async def scenario():
        wire = answer(compress(document), headers=(f"Content-Encoding: {encoding}",))
        async with Server(answering(lambda _request: wire)) as server:
            client = HttpClient()
            body = await fetch_body(client, server.url())
            again = await fetch_body(client, server.url())
            await client.close()
            return body, again, server.connections

    assert run(scenario()) == (document, document, 1)


def test_an_answer_in_an_encoding_we_cannot_decode_raises_and_closes_its_connection(run, one_slot):
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        if request.target == "/br":
            await peer.send(answer(b"\x1b\x03\x00\xf8\xa5\x02", headers=("Content-Encoding: br",)))
        else:
            await peer.send(answer(b"plain"))
        await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            with pytest.raises(HttpClientError, match="br"):
                await call(client, server.url("/br"))
            await asyncio.wait_for(server.peers[0].ended.wait(), 2)
            after = await fetch_body(client, server.url("/after"), connect_timeout=1)
            await client.close()
            return after, server.connections

    assert run(scenario()) == (b"plain", 2)


def test_a_corrupt_gzip_answer_raises(run):
    async def scenario():
        wire = answer(b"\x1f\x8b\x08\x00" + b"not really gzip" * 10, headers=("Content-Encoding: gzip",))
        async with Server(answering(lambda _request: wire)) as server:
            client = HttpClient()
            response = await call(client, server.url())
            with pytest.raises(HttpClientError, match="corrupt"):
                await response.read()
            response.close()
            await client.close()

    run(scenario())


# 9. What the request carries -----------------------------------------------------------------


def test_the_request_carries_the_params_host_length_given_headers_identity_encoding_and_the_exact_body(run):
    body = os.urandom(300_000) + b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"  # binary, with HTTP-looking bytes

    async def scenario():
        async with Server(answering(echo)) as server:
            client = HttpClient()
            response = await call(
                client,
                server.url("/v1/chat/completions?a=1"),
                headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"},
                body=body,
                params={"api-version": "2024-10-21", "q": "x y&z=é"},
            )
            echoed = await response.read()
            bare = await fetch_body(client, f"http://127.0.0.1:{server.port}", method="GET")
            await client.close()
            return server.port, server.requests, echoed, bare

    port, requests, echoed, bare = run(scenario())
    target = "/v1/chat/completions?a=1&api-version=2024-10-21&q=x+y%26z%3D%C3%A9"
    assert requests[0].head == [
        f"POST {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Length: {len(body)}",
        "Authorization: Bearer sk-test",
        "Content-Type: application/json",
        "Accept-Encoding: identity",
    ]
    assert requests[0].body == body
    assert echoed == f"POST {target} {len(body)}".encode()
    assert requests[1].head == [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Length: 0",
        "Accept-Encoding: identity",
    ]
    assert bare == b"GET / 0"


def test_each_request_to_the_same_url_is_sent_with_its_own_method(run):
    # Regression (fixed): `HttpClient._target` caches the request line by (url, query) only, yet the request
    # line starts with the method: after a POST to a URL, a GET to that URL is sent as a POST
    # (and the other way round).
    async def scenario():
        async with Server(answering(echo)) as server:
            client = HttpClient()
            url = server.url("/v1/models")
            bodies = [
                await fetch_body(client, url, method="POST", body=b"{}"),
                await fetch_body(client, url, method="GET"),
            ]
            await client.close()
            return bodies, [request.method for request in server.requests]

    assert run(scenario()) == ([b"POST /v1/models 2", b"GET /v1/models 0"], ["POST", "GET"])


def test_a_url_that_is_not_http_raises_before_anything_is_sent(run):
    async def scenario():
        client = HttpClient()
        for url in ("ftp://127.0.0.1/x", "http:///no-host", "file:///etc/passwd"):
            with pytest.raises(HttpClientError, match="not an http"):
                await call(client, url)
        await client.close()

    run(scenario())


# 10. Header injection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Note": "a\r\nX-Injected: 1"}, "line break"),
        ({"X-Note": "a\nX-Injected: 1"}, "line break"),
        ({"X-Note": "a\rX-Injected: 1"}, "line break"),
        ({"X-Injected: 1\r\nX-Note": "a"}, "line break"),
        ({"X-Note": "price in \u20ac"}, "cannot carry"),
    ],
    ids=["crlf-in-value", "lf-in-value", "cr-in-value", "crlf-in-name", "not-latin-1"],
)
def test_a_header_that_would_break_the_request_raises_and_nothing_reaches_the_server(run, one_slot, headers, message):
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer(b"clean"))

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            with pytest.raises(HttpClientError, match=message):
                await call(client, server.url("/hostile"), headers=headers, body=b"payload")
            # One slot per origin: this also shows the refused request did not keep it.
            after = await fetch_body(client, server.url("/after"), connect_timeout=1)
            # The client may have opened a connection for the refused request: if so, it must
            # have closed it without sending a byte.
            others = [peer for peer in server.peers if not peer.requests]
            await until(lambda: all(peer.ended.is_set() for peer in others))
            await client.close()
            return [bytes(peer.received) for peer in others], server.requests, after

    received, requests, after = run(scenario())
    assert set(received) <= {b""}
    assert [request.target for request in requests] == ["/after"]
    assert b"Injected" not in requests[0].body and all("Injected" not in line for line in requests[0].head)
    assert after == b"clean"


# 11. Answers that are not HTTP ---------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"hello there\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nBroken Header Line\r\n\r\nhello",
        b"HTTP/1.1 OK\r\n\r\n",
    ],
    ids=["ssh-banner", "plain-text", "bad-header-line", "no-status-code"],
)
def test_garbage_instead_of_an_http_answer_raises(run, wire):
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(wire)
        await peer.until_closed_by_client()  # the server keeps the connection open

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            with pytest.raises(HttpClientError, match="not valid HTTP"):
                await call(client, server.url())
            await client.close()

    run(scenario())


def test_a_chunked_body_with_a_garbage_chunk_size_raises_from_read(run):
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
        await asyncio.sleep(0.02)
        await peer.send(b"zz-not-hex\r\nwhatever\r\n")
        await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            response = await call(client, server.url())
            with pytest.raises(HttpClientError, match="not valid HTTP"):
                await response.read()
            response.release()
            await client.close()

    run(scenario())


def test_a_server_switching_protocols_raises(run):
    wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(wire)
        await peer.until_closed_by_client()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            try:
                response = await call(client, server.url())
            except HttpClientError:
                return "raised"
            try:
                await response.read()
            except HttpClientError:
                return "raised"
            finally:
                response.close()
            return f"read a {response.status} answer"

    assert run(scenario()) == "raised"


# 12. The bound on connections per origin -----------------------------------------------------


def test_a_third_concurrent_request_waits_for_one_of_two_connections(run, two_slots):
    async def scenario():
        gates: list[asyncio.Event] = []

        async def handler(peer: Peer) -> None:
            while (request := await peer.request()) is not None:
                gate = asyncio.Event()
                gates.append(gate)
                await gate.wait()  # answered when the test says so
                await peer.send(answer(request.body))

        async with Server(handler) as server:
            client = HttpClient()
            started = time.monotonic()

            async def timed(body: bytes):
                result = await fetch_body(client, server.url(), body=body)
                return result, time.monotonic() - started

            tasks = [asyncio.create_task(timed(str(index).encode())) for index in range(3)]
            await until(lambda: len(server.requests) == 2)
            await asyncio.sleep(0.2)
            waiting = (server.connections, len(server.requests), [task.done() for task in tasks])
            gates[0].set()  # one answer ends: its connection serves the third request
            await until(lambda: len(server.requests) == 3)
            for gate in gates:
                gate.set()
            results = await asyncio.gather(*tasks)
            await client.close()
            return waiting, results, server.connections

    waiting, results, connections = run(scenario())
    assert waiting == (2, 2, [False, False, False])
    assert sorted(body for body, _elapsed in results) == [b"0", b"1", b"2"]
    assert max(elapsed for _body, elapsed in results) >= 0.2  # one of them waited for a slot
    assert connections == 2  # the third request reused a connection


def test_a_request_waiting_for_a_slot_gives_up_at_its_connect_timeout(run, two_slots):
    async def scenario():
        release = asyncio.Event()

        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                await release.wait()
                await peer.send(answer(b"late"))

        async with Server(handler) as server:
            client = HttpClient()
            held = [asyncio.create_task(fetch_body(client, server.url())) for _ in range(2)]
            await until(lambda: len(server.requests) == 2)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await call(client, server.url(), connect_timeout=0.2)
            elapsed = time.monotonic() - started
            release.set()
            results = await asyncio.gather(*held)
            after = await fetch_body(client, server.url())
            await client.close()
            return elapsed, results, after, server.connections

    elapsed, results, after, connections = run(scenario())
    assert 0.15 <= elapsed < 0.7
    assert results == [b"late", b"late"]
    assert after == b"late"
    assert connections == 2


def test_no_slot_leaks_after_requests_that_fail_in_every_way(run, two_slots):
    """Two slots, and each kind of failure happens three times: had any kept its slot, the two
    requests at the end, which the server answers only once both are in, could not both run."""

    async def scenario():
        both_in = asyncio.Event()
        arrived: list[str] = []

        async def handler(peer: Peer) -> None:
            while (request := await peer.request()) is not None:
                target = request.target
                if target == "/silent":
                    await peer.until_closed_by_client()
                elif target == "/close":
                    peer.close()
                elif target == "/garbage":
                    await peer.send(b"garbage\r\n\r\n")
                elif target == "/br":
                    await peer.send(answer(b"?", headers=("Content-Encoding: br",)))
                elif target == "/cut":
                    await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                    peer.close()
                elif target == "/endless":
                    await peer.send(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
                    await peer.until_closed_by_client()
                elif target == "/both":
                    arrived.append(target)
                    if len(arrived) == 2:
                        both_in.set()
                    await asyncio.wait_for(both_in.wait(), 3)
                    await peer.send(answer(b"both"))
                    continue
                return

        async with Server(handler) as server:
            client = HttpClient()
            failures = []
            for _ in range(3):
                for target in ("/silent", "/close", "/garbage", "/br"):
                    try:
                        await call(client, server.url(target), answer_timeout=0.05)
                    except (TimeoutError, HttpClientError) as error:
                        failures.append(type(error).__name__)
                with pytest.raises(HttpClientError):
                    await call(client, server.url("/hostile"), headers={"X": "a\r\nb: c"})
                failures.append("injection")
                response = await call(client, server.url("/cut"))
                with pytest.raises(HttpClientError):
                    await response.read()
                response.release()
                failures.append("cut")
                response = await call(client, server.url("/endless"))
                await response.readline()
                response.release()
                failures.append("released early")
                waiting = asyncio.create_task(call(client, server.url("/silent")))
                await until(lambda: server.requests[-1].target == "/silent")
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                failures.append("cancelled")
            results = await asyncio.gather(
                fetch_body(client, server.url("/both"), connect_timeout=1),
                fetch_body(client, server.url("/both"), connect_timeout=1),
            )
            await client.close()
            return failures, results

    failures, results = run(scenario())
    assert (
        failures
        == [
            "TimeoutError",
            "HttpClientError",
            "HttpClientError",
            "HttpClientError",
            "injection",
            "cut",
            "released early",
            "cancelled",
        ]
        * 3
    )
    assert results == [b"both", b"both"]


def test_refused_connections_do_not_keep_their_slots(run, two_slots):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now

    async def scenario():
        client = HttpClient()
        refused = []
        for _ in range(4):
            with pytest.raises(OSError) as raised:
                await call(client, f"http://127.0.0.1:{port}/", connect_timeout=0.5)
            refused.append(type(raised.value).__name__)
        server = await asyncio.start_server(
            lambda reader, writer: _answer_once(reader, writer, b"up now"), "127.0.0.1", port
        )
        try:
            body = await fetch_body(client, f"http://127.0.0.1:{port}/", connect_timeout=0.5)
        finally:
            server.close()
            await client.close()
        return refused, body

    assert run(scenario()) == (["ConnectionRefusedError"] * 4, b"up now")


async def _answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(answer(body))
    await writer.drain()
    writer.close()


# 13. HTTPS -----------------------------------------------------------------------------------


def issue_certificate(folder, subject: str, alternative_name: x509.GeneralName):
    """A self-signed certificate: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alternative_name]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1."""
    address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    return issue_certificate(tmp_path_factory.mktemp("tls"), "127.0.0.1", address)


def server_tls(certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_to_a_server_whose_certificate_the_given_context_trusts_works_on_one_connection(run, certificate):
    async def scenario():
        async with Server(answering(echo), ssl_context=server_tls(certificate)) as server:
            client = HttpClient(ssl_context=ssl.create_default_context(cafile=str(certificate[0])))
            first = await fetch_body(client, server.url("/one", "https"), body=b"secret")
            second = await fetch_body(client, server.url("/two", "https"))
            cipher = server.peers[0].writer.get_extra_info("cipher")
            await client.close()
            return first, second, server.connections, cipher

    first, second, connections, cipher = run(scenario())
    assert first == b"POST /one 6"
    assert second == b"POST /two 0"
    assert connections == 1
    assert cipher is not None  # the server's side was TLS indeed


def test_https_with_the_default_context_refuses_a_self_signed_certificate(run, certificate):
    async def scenario():
        async with Server(answering(echo), ssl_context=server_tls(certificate)) as server:
            client = HttpClient()  # the system's CAs
            with pytest.raises(ssl.SSLCertVerificationError) as raised:
                await call(client, server.url("/", "https"))
            await client.close()
            return raised.value, server.requests

    error, requests = run(scenario())
    assert isinstance(error, OSError)
    assert "self-signed" in str(error) or "self signed" in str(error)
    assert requests == []


def test_https_checks_the_host_name_against_the_certificate(run, tmp_path):
    # Trusted, but issued for another name than the address called.
    other = issue_certificate(tmp_path, "gateway.test", x509.DNSName("gateway.test"))

    async def scenario():
        async with Server(answering(echo), ssl_context=server_tls(other)) as server:
            client = HttpClient(ssl_context=ssl.create_default_context(cafile=str(other[0])))
            with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
                await call(client, f"https://127.0.0.1:{server.port}/")
            await client.close()
            return server.requests

    assert run(scenario()) == []  # nothing was sent over the unverified connection


# Defects found while writing these tests -----------------------------------------------------
# Each test below failed against the first version of gateway/http_client.py.


@pytest.mark.parametrize(
    "interim",
    ["100 Continue", "103 Early Hints\r\nLink: </style.css>; rel=preload"],
    ids=["100-continue", "103-early-hints"],
)
def test_an_interim_1xx_answer_is_skipped_and_the_final_answer_returned(run, interim):
    # Regression (fixed): the client takes an interim 1xx answer (RFC 9110 15.2: a client must be able to parse
    # 1xx answers it did not ask for, e.g. 103 Early Hints from a CDN) for the answer itself:
    # `request` returns status 100/103 with an empty body, and the connection goes back to the
    # pool with the real answer still in flight, to be read as the answer to the NEXT request
    # (here: the second request gets "final for /1").
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(f"HTTP/1.1 {interim}\r\n\r\n".encode())
            await asyncio.sleep(0.05)
            await peer.send(answer(b"final for " + request.target.encode()))

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            first = await call(client, server.url("/1"))
            first_body = await first.read()
            second = await call(client, server.url("/2"))
            second_body = await second.read()
            await client.close()
            return (first.status, first_body), (second.status, second_body)

    assert run(scenario()) == ((200, b"final for /1"), (200, b"final for /2"))


def test_a_gzip_event_stream_is_read_line_by_line(run):
    # Regression (fixed): with Content-Encoding gzip, `readline` splits the COMPRESSED bytes at b"\n" and
    # returns whatever each piece decompresses to: not lines, and b"" (the end, for `async for`)
    # as soon as a piece decompresses to nothing. Here the gzip header's mtime byte is b"\n",
    # so the first "line" is the 5-byte header prefix and the stream seems to end at once.
    events = [b"data: %d\n" % index for index in range(50)]
    compressed = gzip.compress(b"".join(events), mtime=10)
    assert compressed[4:5] == b"\n"

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n"))
        await peer.send(chunk(compressed) + LAST_CHUNK)
        await peer.until_closed_by_client()

    assert run(all_lines(handler)) == events


def test_an_idle_connection_closed_by_the_server_after_a_large_answer_is_replaced_transparently(run):
    # Regression (fixed): an answer larger than HIGH_WATER (1 MiB, e.g. a batch of embeddings) leaves its
    # connection with reading paused (`data_received` pauses once the whole body is buffered,
    # and nothing resumes it before `put_back`). Paused, the connection never sees the server
    # close it while idle, so `closed` stays False, it is handed to the next request, and that
    # request fails with "the provider closed the connection" instead of using a new one
    # (compare test_an_idle_connection_closed_by_the_server_is_replaced_by_a_new_one_transparently).
    big = b"e" * (2 * http_client.HIGH_WATER)

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        await peer.send(answer(big if request.target == "/big" else b"small"))
        await asyncio.sleep(0.05)
        peer.close()  # the server's idle timeout

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            first = await fetch_body(client, server.url("/big"))
            await until(lambda: server.peers[0].writer.is_closing())
            await asyncio.sleep(0.1)  # the close reaches the client while the connection is idle
            try:
                second = await fetch_body(client, server.url("/small"))
            except HttpClientError as error:
                second = f"{type(error).__name__}: {error}"
            await client.close()
            return len(first), second

    assert run(scenario()) == (len(big), b"small")


def test_an_answer_delimited_by_the_connection_end_that_is_reset_raises(run):
    # Regression (fixed): `connection_lost(exc)` marks an answer without Content-Length or chunked coding
    # complete whatever `exc` is: a connection reset (or a TLS connection cut without
    # close_notify) mid-body gives a truncated body as if whole. RFC 9112 section 8: such an
    # answer is complete "unless an error was indicated by the underlying connection".
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"partial')
        await asyncio.sleep(0.05)
        peer.reset()

    async def scenario():
        async with Server(handler) as server:
            client = HttpClient()
            response = await call(client, server.url())
            try:
                outcome = await response.read()
            except HttpClientError as error:
                outcome = type(error).__name__
            await client.close()
            return outcome

    assert run(scenario()) == "HttpClientError"


def test_a_truncated_gzip_answer_raises(run):
    # Regression (fixed): the decoder's end is never checked (`zlib.decompressobj().eof`), so a gzip body cut
    # short (with a matching Content-Length) decodes to a silently truncated answer.
    document = b'{"data": [' + b", ".join(b"%d" % index for index in range(5000)) + b"]}"
    compressed = gzip.compress(document)
    wire = answer(compressed[: len(compressed) // 2], headers=("Content-Encoding: gzip",))

    async def scenario():
        async with Server(answering(lambda _request: wire)) as server:
            client = HttpClient()
            response = await call(client, server.url())
            try:
                outcome = await response.read()
            except HttpClientError as error:
                outcome = type(error).__name__
            response.close()
            await client.close()
            return outcome

    assert run(scenario()) == "HttpClientError"


def test_idle_connections_are_closed_after_keepalive_seconds_even_when_a_newer_one_is_in_use(run, monkeypatch):
    # Regression (minor, fixed): the module promises "idle connections closed after KEEPALIVE_SECONDS", but
    # an idle connection is only looked at when it is popped, newest first. After a burst, the
    # older idle connections stay open for as long as the newest one keeps being reused.
    monkeypatch.setattr(http_client, "KEEPALIVE_SECONDS", 0.2)

    async def scenario():
        gates: list[tuple[Peer, asyncio.Event]] = []

        async def handler(peer: Peer) -> None:
            while (request := await peer.request()) is not None:
                if request.target == "/burst":
                    gate = asyncio.Event()
                    gates.append((peer, gate))
                    await gate.wait()
                await peer.send(answer(b"ok"))

        async with Server(handler) as server:
            client = HttpClient()
            burst = [asyncio.create_task(fetch_body(client, server.url("/burst"))) for _ in range(2)]
            await until(lambda: len(gates) == 2)
            (_, first_gate), (_, second_gate) = gates
            first_gate.set()  # one connection goes idle first...
            await asyncio.wait(burst, return_when=asyncio.FIRST_COMPLETED)
            second_gate.set()  # ...then the other, which steady traffic now reuses
            await asyncio.gather(*burst)
            for _ in range(6):
                await asyncio.sleep(0.08)
                await fetch_body(client, server.url("/steady"))
            outcome = sorted((peer.ended.is_set(), len(peer.requests)) for peer in server.peers)
            await client.close()
            return outcome

    # One connection served the steady requests; the other, idle for about 0.5 s (past
    # KEEPALIVE_SECONDS), should have been closed by the client meanwhile.
    assert run(scenario()) == [(False, 7), (True, 1)]


def test_a_client_used_again_after_close_still_closes_its_connections_on_the_next_close(run):
    # Regression (minor, fixed): `close` clears `_pools` but not the `_targets` cache, which holds the pools:
    # a URL requested again after `close` reuses its old pool, now outside `_pools`, so the
    # next `close` never sees that pool's idle connections and leaves them open.
    async def scenario():
        async with Server(answering(echo)) as server:
            client = HttpClient()
            await fetch_body(client, server.url("/a"))
            await client.close()
            await fetch_body(client, server.url("/a"))
            await client.close()
            with contextlib.suppress(TimeoutError):
                await until(lambda: all(peer.ended.is_set() for peer in server.peers), timeout=0.5)
            return [peer.ended.is_set() for peer in server.peers]

    assert run(scenario()) == [True, True]


def test_the_host_header_of_an_ipv6_literal_keeps_its_brackets(run):
    # Regression (minor, fixed): `Host` is built from `urlsplit(url).hostname`, which drops the brackets of
    # an IPv6 literal: "Host: ::1:8080" instead of "Host: [::1]:8080" (RFC 9110 7.2, 3986 3.2.2).
    # The project's machines have an IPv6 loopback (Redis itself listens on ::1 there).
    async def scenario():
        async with Server(answering(echo), host="::1") as server:
            client = HttpClient()
            await fetch_body(client, server.url("/"))
            await client.close()
            return server.requests[0].header("host"), server.port

    host, port = run(scenario())
    assert host == f"[::1]:{port}"

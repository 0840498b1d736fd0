"""The worker's HTTP layer: plain ASGI under uvicorn, no web framework on the hot path.

A framework's routing, middleware stack and request objects cost more per request than the
gateway's own checks; the worker serves six fixed routes, so a dict lookup does the routing.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import orjson

log = logging.getLogger("gateway.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")

# CORS, for browsers on the origins of GATEWAY_CORS_ORIGINS (the portal's playground): the
# caller key travels in Authorization, never in a cookie, so no credentials mode is offered.
CORS_PATH_PREFIX = "/v1/"
CORS_EXPOSED = ", ".join(
    (
        "x-request-id",
        "x-client-request-id",
        "x-gatehouse-deployment",
        *(f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")),
    )
)
CORS_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, POST"),
    (b"access-control-allow-headers", b"authorization, content-type, x-request-id"),
    (b"access-control-max-age", b"600"),
    (b"vary", b"Origin"),
]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Request:
    __slots__ = ("receive", "scope")

    def __init__(self, scope: Scope, receive: Receive):
        self.scope, self.receive = scope, receive

    def header(self, name: bytes) -> str:
        """One request header (lower-case name), decoded as ASGI servers do: Latin-1."""
        for key, value in self.scope["headers"]:
            if key == name:
                return str(value.decode("latin-1"))
        return ""

    async def body(self, limit: int) -> bytes | None:
        """The whole body, or None when it grows past `limit` bytes (reading stops there)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Response:
    """A complete answer; `headers` are extra (name, value) pairs besides the content type."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, content_type: bytes = b"application/json"
    ):
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers if headers is not None else {}

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", self.content_type)] + [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers.items()
        ]

    async def send(self, send: Send, receive: Receive) -> None:
        headers = self.raw_headers()
        headers.append((b"content-length", b"%d" % len(self.body)))  # else the server sends it chunked
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(status: int, document: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(document), headers)


class StreamResponse(Response):
    """Server-sent events relayed as they arrive. A client that goes away cancels the relay at
    once (the generator's `finally` then settles what was produced)."""

    __slots__ = ("chunks", "on_close")

    def __init__(
        self, chunks: AsyncIterator[bytes], headers: dict[str, str], on_close: Callable[[], None] | None = None
    ):
        super().__init__(200, b"", headers, b"text/event-stream")
        self.chunks, self.on_close = chunks, on_close

    async def send(self, send: Send, receive: Receive) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, gone):
                task.cancel()
            await asyncio.gather(relay, gone, return_exceptions=True)  # both have ended
            if self.on_close is not None:  # also when the relay never started
                self.on_close()
        if not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()  # type: ignore[misc]

    async def _relay(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.raw_headers()})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()


async def _send_preflight(send: Send, origin: str) -> None:
    """204 to a CORS preflight: no body, so neither content-type nor content-length."""
    headers = [(b"access-control-allow-origin", origin.encode("latin-1")), *CORS_PREFLIGHT]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def allowed_origins(value: str) -> frozenset[str]:
    """GATEWAY_CORS_ORIGINS: comma-separated origins (`https://portal.example.com`, scheme,
    host and port only, as browsers send them); empty allows none."""
    origins = set()
    for item in value.split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        parts = urlsplit(origin)
        try:
            valid = parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid or parts.path or parts.query or parts.fragment or parts.username:
            raise SystemExit(f"GATEWAY_CORS_ORIGINS: {origin!r} is not an origin such as https://portal.example.com.")
        origins.add(origin.lower())
    return frozenset(origins)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """ASGI app: (method, path) -> handler; unknown paths answer in OpenAI's error shape."""

    def __init__(
        self,
        routes: dict[tuple[str, str], Handler],
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        prefixes: dict[tuple[str, str], Handler] | None = None,
        cors_origins: Collection[str] = (),
    ):
        """`prefixes` route every path under a prefix (such as `/v1/models/`) to one handler;
        browsers on `cors_origins` may call the /v1/ routes (preflights answered here)."""
        self.routes, self.startup, self.shutdown = routes, startup, shutdown
        self.prefixes = prefixes or {}
        self.paths = {path for _, path in routes}
        self.cors_origins = frozenset(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        origin = self._allowed_origin(scope) if self.cors_origins and path.startswith(CORS_PATH_PREFIX) else None
        if origin is not None and method == "OPTIONS":
            await _send_preflight(send, origin)
            return
        handler = self.routes.get((method, path))
        if handler is None and self.prefixes:
            handler = self._by_prefix(method, path)
        if handler is None:
            known = path in self.paths or any(path.startswith(prefix) for _, prefix in self.prefixes)
            response = not_found(method, known)
        else:
            try:
                response = await handler(Request(scope, receive))
            except Exception:
                log.exception("unhandled error on %s", scope["path"])
                response = error_response(500, "internal_error", "The gateway failed on this request.", {})
        if origin is not None:
            # A copy: a handler may answer with a dict it shares between responses.
            response.headers = {
                **response.headers,
                "access-control-allow-origin": origin,
                "access-control-expose-headers": CORS_EXPOSED,
                "vary": "Origin",
            }
        await response.send(send, receive)

    def _allowed_origin(self, scope: Scope) -> str | None:
        """The request's Origin when it is one of `cors_origins`; None for any other request."""
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = str(value.decode("latin-1"))
                return origin if origin in self.cors_origins else None
        return None

    def _by_prefix(self, method: str, path: str) -> Handler | None:
        for (route_method, prefix), handler in self.prefixes.items():
            if route_method == method and path.startswith(prefix) and len(path) > len(prefix):
                return handler
        return None

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    """An error in OpenAI's shape: {"error": {"message", "type", "code"}}."""
    document = {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "code": code}}
    return Response(status, orjson.dumps(document), headers)


def not_found(method: str, path_known: bool) -> Response:
    if path_known:
        return error_response(405, "method_not_allowed", f"{method} is not allowed here.", {})
    return error_response(404, "not_found", "There is no such endpoint on this gateway.", {})

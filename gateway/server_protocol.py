"""uvicorn's HTTP protocol (httptools) with a deadline for request headers.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but waits for ever for the
headers of a request that has begun, or for the first byte on a new connection: a client that
opens connections and sends half a request holds them for good (issue 11, observation 9). Here
the headers must be complete within HEADER_TIMEOUT_SECONDS of the connection opening or of the
request's first byte; otherwise the client gets `408 Request Timeout` and the connection is
closed. The body has its own deadline, in the application (gateway/http.py, Request.body).
"""

import asyncio
import os

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_SECONDS = float(os.environ.get("GATEWAY_HEADER_TIMEOUT_SECONDS", "10"))
_TIMED_OUT_BODY = orjson.dumps(
    {
        "error": {
            "message": "The request headers did not arrive in time.",
            "type": "invalid_request_error",
            "code": "request_timeout",
        }
    }
)
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%b" % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY)
)


class GatewayHttpProtocol(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()

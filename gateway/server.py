"""The HTTP server under the worker: uvicorn with httptools and uvloop, one change.

uvicorn writes a response's status line and headers, then its body, with two system calls;
on this hot path a write is the most expensive thing a request does. The protocol here hands
uvicorn a transport that gathers the writes of one event-loop turn into one.
"""

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Writes made in the same loop turn go out together at the end of the turn; everything
    else is the real transport's. Closing sends what is pending first."""

    __slots__ = ("_pending", "_transport")

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport)  # type: ignore[assignment]


def server_config(host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )

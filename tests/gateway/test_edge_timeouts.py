"""Deadlines at the gateway's edge (issue 11, observation 9): a client that sends half a request,
or nothing, or a body one byte at a time, no longer holds a connection for good."""

import json
import socket
import time

import pytest

SHORT = {"GATEWAY_HEADER_TIMEOUT_SECONDS": "1", "GATEWAY_BODY_TIMEOUT_SECONDS": "1"}


def connect(worker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def error_of(answer: bytes) -> tuple[str, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)["error"]


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"],
    ids=["nothing", "half-the-headers"],
)
def test_headers_that_do_not_arrive_in_time_get_408_and_the_connection_closed(served, gateway_workers, sent):
    (worker,) = gateway_workers(1, **SHORT)
    with connect(worker) as sock:
        sock.sendall(sent)
        answer, waited = read_until_closed(sock)
    assert waited < 5  # the deadline is 1 s; it used to be never
    status, error = error_of(answer)
    assert status == "HTTP/1.1 408 Request Timeout" and error["code"] == "request_timeout"
    assert worker.get("/healthz").status_code == 200  # and the worker serves on


def test_a_body_trickled_one_byte_at_a_time_gets_408_at_its_deadline(served, gateway_workers):
    (worker,) = gateway_workers(1, **SHORT)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {served['plaintext']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(worker) as sock:
        sock.sendall(head)
        started = time.monotonic()
        sock.settimeout(0.3)
        answer = b""
        for byte in body:  # one byte every 0.3 s: the whole body would take about 20 s
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        waited = time.monotonic() - started
    assert waited < 5
    status, error = error_of(answer)
    assert status.startswith("HTTP/1.1 408") and error["code"] == "request_timeout"
    assert "within 1 s" in error["message"]
    assert b"connection: close" in answer.lower()

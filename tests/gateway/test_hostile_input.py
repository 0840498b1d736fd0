"""Hostile input at the gateway's edge (issue 10, observations 1-3 and 6): nothing a caller
sends is stored unchecked, stops usage recording, or answers 500; `--workers N` gives each
process its own node."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from budgets.services import create_budget
from fleet import services
from fleet.redis_client import redis_keys
from gateway.__main__ import SHUTDOWN_SECONDS
from gateway.usage import UsageEvent
from keys.services import create_credential
from sla.services import create_deployment, create_route
from tests.plugins.gateway_workers import ROOT, GatewayWorker

MESSAGES = [{"role": "user", "content": "Hello"}]


def post(worker, key: str, content: bytes, **headers) -> httpx.Response:
    return httpx.post(
        f"{worker.url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
        timeout=10,
    )


def stream_request_ids(client) -> list[str]:
    return [fields[b"request_id"].decode() for _, fields in client.xrange(redis_keys().usage_stream)]


def wait_for(condition, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_model_name_with_a_nul_is_refused_400_naming_the_field(served, gateway_workers, clean_redis):
    (worker,) = gateway_workers(1)
    response = post(
        worker, served["plaintext"], b'{"model":"gpt-4o\\u0000","messages":[{"role":"user","content":"x"}]}'
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "'model'" in error["message"]
    # The refusal is recorded without the caller's bytes: no NUL reaches the usage stream.
    assert wait_for(lambda: len(stream_request_ids(clean_redis)) == 1)
    ((_, fields),) = clean_redis.xrange(redis_keys().usage_stream)
    assert b"\x00" not in b"".join(fields.values())
    assert fields[b"status"] == b"400"


def test_a_lone_surrogate_gets_400_and_usage_recording_goes_on(served, gateway_workers, clean_redis):
    (worker,) = gateway_workers(1)
    refused = post(worker, served["plaintext"], b'{"model":"\\ud800","messages":[{"role":"user","content":"x"}]}')
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    answered = post(worker, served["plaintext"], b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}')
    assert answered.status_code == 200
    # The worker's usage flush is still alive: the answered request reaches the stream.
    assert wait_for(lambda: answered.headers["x-request-id"] in stream_request_ids(clean_redis))


@pytest.mark.parametrize("depth", [100_000, 1_000, 65])
def test_deeply_nested_json_is_a_400_not_a_500(served, gateway_workers, depth):
    (worker,) = gateway_workers(1)
    body = b'{"model":"gpt-4o","messages":' + b"[" * depth + b"]" * depth + b"}"
    response = post(worker, served["plaintext"], body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_nesting_within_the_bound_is_served(served, gateway_workers):
    (worker,) = gateway_workers(1)
    deep = "[" * 40 + "]" * 40
    body = ('{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"metadata_nested":' + deep + "}").encode()
    assert post(worker, served["plaintext"], body).status_code == 200


@pytest.mark.parametrize("request_id", ["has space", "semi;colon", "x" * 65, "caf\u00e9"])
def test_a_bad_x_request_id_is_refused_naming_the_header(served, gateway_workers, request_id):
    (worker,) = gateway_workers(1)
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}'
    response = httpx.post(
        f"{worker.url}/v1/chat/completions",
        content=body,
        headers=[
            ("Authorization", f"Bearer {served['plaintext']}"),
            ("X-Request-Id", request_id.encode("utf-8")),
        ],
        timeout=10,
    )
    assert response.status_code == 400
    assert "X-Request-Id" in response.json()["error"]["message"]


def test_unknown_paths_answer_json_in_the_openai_error_shape(served, gateway_workers):
    (worker,) = gateway_workers(1)
    missing = httpx.post(f"{worker.url}/v1/not-here", json={}, timeout=5)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong_method = httpx.get(f"{worker.url}/v1/chat/completions", timeout=5)
    assert wrong_method.status_code == 405


def test_a_usage_event_with_a_lone_surrogate_still_encodes():
    event = UsageEvent("r1", "o", "t", "k", alias="bad\ud800name")
    fields = event.stream_fields()
    assert fields[b"alias"] == b"bad\\ud800name"
    assert all(isinstance(value, bytes) for value in fields.values())


def test_workers_n_gives_each_process_its_own_node_id_state_and_heartbeat(served, tmp_path, clean_redis):
    base = f"multi-{uuid.uuid4().hex[:6]}"
    worker = GatewayWorker(base, tmp_path / "state")
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gateway", "--port", str(worker.port), "--workers", "2"],
        cwd=ROOT,
        env=worker.environment(),
        stdout=subprocess.DEVNULL,
        stderr=worker.log_path.open("ab"),
    )
    worker.process = process
    try:
        nodes = redis_keys()
        expected = {f"{base}-1", f"{base}-2"}
        assert wait_for(
            lambda: expected <= {name.decode() for name in clean_redis.zrange(nodes.nodes, 0, -1)}, timeout=20
        ), worker.log()[-2000:]
        pids = {clean_redis.hget(nodes.node(node_id), "pid") for node_id in expected}
        assert len(pids) == 2  # two processes, each heartbeating for itself
        for node_id in expected:
            assert wait_for(lambda node_id=node_id: any((tmp_path / "state" / node_id).glob("*")))
        assert not (tmp_path / "state" / base).exists()  # nobody shares the unnumbered folder
        # Both serve on the one port, each a fair share of a burst of new connections, queued
        # while both are stopped: SO_REUSEPORT gives each process a queue of its own. (This does
        # not reproduce the skew of one shared socket under load, 61 of 64 connections to one
        # process in bench section 12; here that socket split 58/42.)
        pids = [int(clean_redis.hget(nodes.node(node_id), "pid")) for node_id in sorted(expected)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            connections = [socket.create_connection(("127.0.0.1", worker.port), timeout=10) for _ in range(256)]
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}'
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {served['plaintext']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        ours = set()
        for connection in connections:
            with connection:
                connection.sendall(request)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += connection.recv(65536)
                assert head.startswith(b"HTTP/1.1 200"), head[:200]
                ours.add(re.search(rb"x-request-id: (\S+)", head, re.IGNORECASE).group(1).decode())

        def served_by() -> Counter:
            entries = clean_redis.xrange(nodes.usage_stream)
            return Counter(f[b"node_id"].decode() for _, f in entries if f[b"request_id"].decode() in ours)

        assert wait_for(lambda: sum(served_by().values()) == 256, timeout=20)
        assert set(served_by()) == expected and min(served_by().values()) >= 77, served_by()  # 30% or more each
        # A supervisor killed outright takes its workers with it: none is left on the port.
        process.kill()
        process.wait()
        # Each worker gets SIGTERM and stops gracefully, within its SHUTDOWN_SECONDS (12 s) at
        # worst: on a loaded machine CI saw one take longer than the 10 s allowed before.
        limit = SHUTDOWN_SECONDS + 5
        assert wait_for(lambda: not any(_running(pid) for pid in pids), timeout=limit), worker.log()[-2000:]
    finally:
        worker.stop()
    assert process.returncode is not None


def _running(pid: int) -> bool:
    """Whether the process still runs: gone, or a zombie its new parent has not reaped yet, is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class OddProvider(BaseHTTPRequestHandler):
    """A provider whose 200 answer is JSON but not an object."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"[1, 2, 3]"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_provider():
    server = ThreadingHTTPServer(("127.0.0.1", 0), OddProvider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_provider_answer_that_is_not_an_object_is_a_502_and_still_recorded(
    served, org, actors, gateway_workers, clean_redis, odd_provider
):
    credential = create_credential(
        actor=actors["admin"],
        org=org,
        name="Odd provider",
        provider="openai_compatible",
        base_url=odd_provider,
        secrets={"api_key": "sk-odd-provider-0000"},
    )
    deployment = create_deployment(
        actor=actors["admin"],
        org=org,
        name="odd",
        credential=credential,
        upstream_model="odd-model",
        input_price_per_mtok=Decimal("1"),
        output_price_per_mtok=Decimal("1"),
    )
    create_route(actor=actors["admin"], org=org, alias="odd-model", deployments=[deployment])
    services.publish_pending()
    (worker,) = gateway_workers(1)
    response = post(worker, served["plaintext"], b'{"model":"odd-model","messages":[{"role":"user","content":"x"}]}')
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    request_id = response.headers["x-request-id"]
    assert wait_for(lambda: request_id in stream_request_ids(clean_redis))


@pytest.mark.parametrize("max_tokens", ['"abc"', "[1]", "1e400"])
def test_embeddings_ignore_a_hostile_max_tokens_under_a_budget(served, org, actors, gateway_workers, max_tokens):
    create_budget(actor=actors["finance"], org=org, name="Cap", scope="org", amount=Decimal("100"), period="monthly")
    services.publish_pending()
    (worker,) = gateway_workers(1)
    body = '{"model":"text-embedding-3-small","input":"x","max_tokens":' + max_tokens + "}"
    response = httpx.post(
        f"{worker.url}/v1/embeddings",
        content=body.encode(),
        headers={"Authorization": f"Bearer {served['plaintext']}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code in {200, 400}, response.text


def test_a_body_with_a_checked_key_twice_is_not_forwarded_as_sent():
    from gateway.validation import forwardable

    assert forwardable(b'{"model":"gpt-4o","messages":[],"max_tokens":8}')
    assert not forwardable(b'{"model":"gpt-4o","max_tokens":8,"max_tokens":100000}')
    assert not forwardable(b'{"model":"gpt-4o","\\u006dax_tokens":100000,"max_tokens":8}')

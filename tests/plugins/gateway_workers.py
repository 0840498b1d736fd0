"""Real gateway worker processes (`python -m gateway`) on free loopback ports."""

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from gateway.config import public_key_text, signing_key_from_text
from tests.plugins.waiting import wait_while_running

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GatewayWorker:
    def __init__(self, node_id: str, state_dir: Path):
        self.node_id, self.port = node_id, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.process: subprocess.Popen | None = None

    def environment(self, **overrides) -> dict:
        env = {
            **os.environ,
            "REDIS_URL": settings.REDIS_URL,
            "GATEHOUSE_REDIS_PREFIX": settings.GATEHOUSE_REDIS_PREFIX,
            "GATEHOUSE_SIGNING_PUBLIC_KEY": public_key_text(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY)),
            "GATEHOUSE_GATEWAY_KEY": settings.GATEHOUSE_GATEWAY_KEY,
            "GATEWAY_NODE_ID": self.node_id,
            "GATEWAY_STATE_DIR": str(self.state_dir),
            "GATEWAY_POLL_SECONDS": "0.5",
            "GATEWAY_HEARTBEAT_SECONDS": "0.5",
            "GATEWAY_UPSTREAM_TIMEOUT_SECONDS": "10",
        }
        env.update(overrides)
        return env

    @property
    def log_path(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / f"{self.node_id}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, wait_ready: bool = True, **env) -> "GatewayWorker":
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gateway", "--port", str(self.port)],
            cwd=ROOT,
            env=self.environment(**env),
            stdout=subprocess.DEVNULL,
            # A file, not a pipe: an unread pipe fills up and would block the worker.
            stderr=self.log_path.open("ab"),
        )
        self.wait(lambda: self.get("/healthz").status_code == 200)
        if wait_ready:
            self.wait(lambda: self.get("/readyz").status_code == 200)
        return self

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=2)

    def wait(self, condition, timeout: float = 15) -> None:
        wait_while_running(
            self.process, condition, timeout, name=f"gateway {self.node_id}", log=self.log, tolerate=(httpx.HTTPError,)
        )

    def revision(self) -> int | None:
        response = self.get("/readyz")
        return response.json().get("revision") if response.status_code == 200 else None

    def stop(self) -> None:
        if os.environ.get("GATEWAY_TEST_LOGS"):
            print(self.log()[-5000:])
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def burst(urls: list[str], key: str, count: int, body: dict) -> list[httpx.Response]:
    """`count` chat completions at once, spread over the workers' URLs."""
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        headers = {"Authorization": f"Bearer {key}"}
        requests = [
            client.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body, headers=headers) for i in range(count)
        ]
        return await asyncio.gather(*requests)


@pytest.fixture
def gateway_workers(tmp_path):
    """gateway_workers(n) -> n started workers; all stopped after the test."""
    started: list[GatewayWorker] = []

    def start(count: int = 1, **env) -> list[GatewayWorker]:
        workers = [GatewayWorker(f"test-node-{len(started) + i}", tmp_path / "state") for i in range(count)]
        for worker in workers:
            started.append(worker)  # listed first: one that never gets ready is stopped too
            worker.start(**env)
        return workers

    yield start
    for worker in started:
        worker.stop()

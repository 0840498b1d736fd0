"""The provider simulator served by uvicorn in a background thread, on a free loopback port."""

import threading
import time

import httpx
import pytest
import uvicorn

from gateway.simulator.app import create_app


class RunningSimulator:
    def __init__(self) -> None:
        config = uvicorn.Config(create_app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "RunningSimulator":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the provider simulator did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def configure(self, **body) -> dict:
        return httpx.post(f"{self.url}/_sim/config", json=body, timeout=5).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sim/reset", timeout=5)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_sim/stats", timeout=5).json()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def running_simulator():
    simulator = RunningSimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture
def provider_simulator(running_simulator):
    """The simulator, reset to defaults for each test."""
    running_simulator.reset()
    yield running_simulator
    running_simulator.reset()

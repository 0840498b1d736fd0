"""A real HAProxy (Debian's package) in front of HTTP backends, as a load balancer in front of
gateway hosts: round robin, health checks on a readiness path, and retries on another backend
when one is gone, so killing a backend costs clients as few errors as possible."""

import csv
import io
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.plugins.gateway_workers import free_port
from tests.plugins.redis_topology import die_with_test_run
from tests.plugins.waiting import wait_while_running

HOST = "127.0.0.1"
# Checked every 0.5 s, down after 2 failed checks, up again after 1; a connection that live
# traffic sees refused marks the server down at once, before the next check.
SERVER_OPTIONS = (
    "check inter 500 fastinter 250 downinter 500 fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down"
)


def haproxy_binary() -> str:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy; .ci/run does it)")
    return binary


class HAProxy:
    """One haproxy process in the foreground, balancing `backends` (host, port) round robin."""

    def __init__(
        self,
        directory,
        backends: list[tuple[str, int]],
        *,
        health_path: str = "/readyz",
        retries: int = 3,
        retry_on: str = "conn-failure empty-response",
    ):
        """`retry_on`: which failures HAProxy retries on another backend. "empty-response" also
        retries a request whose backend died before answering a byte: the client sees no error,
        but a POST the dead backend had already acted on is then processed twice."""
        self.directory, self.backends = Path(directory), list(backends)
        self.health_path, self.retries, self.retry_on = health_path, retries, retry_on
        self.port, self.stats_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{HOST}:{self.stats_port}/stats"

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.directory / "haproxy.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @staticmethod
    def server_name(index: int) -> str:
        """The name of backends[index] in the config and in server_states()."""
        return f"server{index}"

    def config(self) -> str:
        servers = "\n".join(
            f"    server {self.server_name(index)} {host}:{port}" for index, (host, port) in enumerate(self.backends)
        )
        return f"""\
global
    maxconn 4096

defaults
    mode http
    # An LLM answer may take minutes, streamed or not; connecting must not.
    timeout connect 2s
    timeout client 600s
    timeout server 600s
    timeout http-request 30s
    timeout http-keep-alive 10s
    timeout queue 10s
    timeout check 1s
    # A request whose backend refused it (or died before answering) goes to another one.
    retries {self.retries}
    option redispatch 1
    retry-on {self.retry_on}

frontend gateway
    bind {HOST}:{self.port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET {self.health_path}
    http-check expect status 200
    default-server {SERVER_OPTIONS}
{servers}

listen stats
    bind {HOST}:{self.stats_port}
    stats enable
    stats uri /stats
    stats refresh 1s
"""

    def start(self, *, wait_for_backends: bool = True) -> "HAProxy":
        """Start haproxy and wait until its frontend answers (and, by default, until every backend
        passes its health check); returns self."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [haproxy_binary(), "-f", str(self.config_path), "-db"],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_test_run(),
            )
        try:
            self._wait(lambda: httpx.get(self.url + self.health_path, timeout=1) is not None, "frontend answers")
            if wait_for_backends:
                self.wait_for_states(dict.fromkeys(map(self.server_name, range(len(self.backends))), "UP"))
        except BaseException:
            self.stop()
            raise
        return self

    def server_states(self) -> dict[str, str]:
        """{server name: status} from the stats page: "UP", "DOWN", "UP 1/2" (going down), ..."""
        text = httpx.get(self.stats_url + ";csv", timeout=2).text
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "gateways"}

    def wait_for_states(self, expected: dict[str, str], timeout: float = 10) -> float:
        """Seconds until the named servers have the expected status."""
        start = time.monotonic()

        def reached() -> bool:
            states = self.server_states()
            return all(states.get(name) == status for name, status in expected.items())

        self._wait(reached, f"servers {expected}", timeout)
        return time.monotonic() - start

    def _wait(self, condition, what: str, timeout: float = 10) -> None:
        wait_while_running(
            self.process, condition, timeout, name=f"haproxy ({what})", log=self.log, tolerate=(httpx.HTTPError,)
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def haproxy_factory(tmp_path):
    """haproxy_factory(backends, **options) -> a started HAProxy; all of them stopped after the test."""
    made: list[HAProxy] = []

    def make(backends: list[tuple[str, int]], *, wait_for_backends: bool = True, **options) -> HAProxy:
        proxy = HAProxy(tmp_path / f"haproxy-{len(made)}", backends, **options)
        made.append(proxy)
        return proxy.start(wait_for_backends=wait_for_backends)

    yield make
    for proxy in made:
        proxy.stop()

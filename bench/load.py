"""Load generation with wrk, a C load generator, so the client costs little of the two cores
the gateway, the simulator and Redis share. (A Python client at concurrency 16 took about as
much CPU as the gateway it measured.)

`make bench` installs Debian's wrk when it is missing; elsewhere install it by hand.
"""

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHAT_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}

# `done` prints one machine-readable line; wrk's own summary rounds latencies to 10 µs.
SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("GATEHOUSE_RESULT %%d %%d %%d %%d %%d %%d %%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    bad_status: int  # answers other than 2xx/3xx
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("bench needs wrk: `apt-get install wrk` (make bench does it when run as root)")
    return path


def run_wrk(
    url: str, key: str, *, concurrency: int, seconds: int, body: dict | None = None, path: str = "/v1/chat/completions"
) -> LoadResult:
    """`concurrency` connections, each sending the next request when the last one is answered."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(SCRIPT % {"body": json.dumps(json.dumps(body or CHAT_BODY)), "key": key})
        script = handle.name
    try:
        output = subprocess.run(  # noqa: S603
            [wrk_path(), "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", script, f"{url}{path}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        Path(script).unlink()
    line = next(line for line in output.splitlines() if line.startswith("GATEHOUSE_RESULT"))
    requests, duration_us, p50, p99, worst, bad, errors = (int(part) for part in line.split()[1:])
    return LoadResult(requests, duration_us / 1e6, p50 / 1000, p99 / 1000, worst / 1000, bad, errors)

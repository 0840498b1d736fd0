"""Gateway overhead: the same load against the simulator directly and through the gateway.

Run: make bench BENCH=gateway_overhead   (or: .venv/bin/python scripts/with_services.py
.venv/bin/python bench/gateway_overhead.py). Prints a Markdown table for bench/RESULTS.md.

Each round sends the same requests (non-streaming chat completions, the simulator answering
at once) at concurrency 1 and 16 for SECONDS each: directly to the simulator, through a bare
pass-through proxy (bench/floor_proxy.py: what Python allows, with nothing of the gateway's
work), and through one gateway worker process with auth, an RPM limit (in Redis) and usage
events on. Load comes from wrk (bench/load.py). Figures are medians over rounds; "added" is
the path's latency minus direct, measured side by side.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import load

ROUNDS = 5
SECONDS = 6
CONCURRENCY = (1, 16)


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        _org, _team, (key,) = harness.seed(simulator_url, rpm_limit=1_000_000)
        from fleet import services

        services.publish_pending()
        gateway, gateway_url = harness.start_gateway("bench-overhead", Path(tempfile.mkdtemp()))
        floor_port = harness.free_port()
        floor_url = f"http://127.0.0.1:{floor_port}"
        floor = harness.Process(
            [sys.executable, "bench/floor_proxy.py", "--port", str(floor_port), "--upstream", simulator_url],
            ready_url=f"{floor_url}/ready",
        )
        paths = {"direct": simulator_url, "bare proxy": floor_url, "gateway": gateway_url}
        try:
            for url in paths.values():  # warm connections, caches and the breaker window
                load.run_wrk(url, key, concurrency=16, seconds=3)
            rows = []
            for concurrency in CONCURRENCY:
                results: dict[str, list[load.LoadResult]] = {name: [] for name in paths}
                for _ in range(ROUNDS):
                    for name, url in paths.items():
                        result = load.run_wrk(url, key, concurrency=concurrency, seconds=SECONDS)
                        if result.bad_status or result.socket_errors:
                            raise RuntimeError(f"{name}: {result}")
                        results[name].append(result)
                p50 = {name: harness.median([r.p50_ms for r in runs]) for name, runs in results.items()}
                p99 = {name: harness.median([r.p99_ms for r in runs]) for name, runs in results.items()}
                rps = {name: harness.median([r.rps for r in runs]) for name, runs in results.items()}
                for name in paths:
                    rows.append(
                        (
                            concurrency,
                            name,
                            p50[name],
                            p99[name],
                            rps[name],
                            p50[name] - p50["direct"],
                            p99[name] - p99["direct"],
                        )
                    )
        finally:
            floor.stop()
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    print(
        f"Gateway overhead, medians of {ROUNDS} rounds of {SECONDS} s each "
        "(ms; requests per second of one process; load from wrk)\n"
    )
    print("| concurrency | path | p50 | p99 | requests/s | added p50 | added p99 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {} | {:.3f} | {:.3f} | {:.0f} | {:.3f} | {:.3f} |".format(*row))


if __name__ == "__main__":
    main()

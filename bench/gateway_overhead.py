"""Gateway overhead: the same load against the simulator directly and through the gateway.

Run: make bench BENCH=gateway_overhead   (or: .venv/bin/python scripts/with_services.py
.venv/bin/python bench/gateway_overhead.py). Prints a Markdown table for bench/RESULTS.md.

Each round sends the same requests (non-streaming chat completions, the simulator answering
at once) at concurrency 1 and 16 for SECONDS each, first directly to the simulator, then
through one gateway worker process with auth, an RPM limit (in Redis) and usage events on.
Load comes from wrk (bench/load.py). Figures are medians over rounds; the added latency is
gateway minus direct, measured side by side.
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
        try:
            for url in (simulator_url, gateway_url):  # warm connections, caches and the breaker window
                load.run_wrk(url, key, concurrency=16, seconds=3)
            rows = []
            for concurrency in CONCURRENCY:
                results: dict[str, list[load.LoadResult]] = {"direct": [], "gateway": []}
                for _ in range(ROUNDS):
                    for target, url in (("direct", simulator_url), ("gateway", gateway_url)):
                        result = load.run_wrk(url, key, concurrency=concurrency, seconds=SECONDS)
                        if result.bad_status or result.socket_errors:
                            raise RuntimeError(f"{target}: {result}")
                        results[target].append(result)
                direct_p50 = harness.median([r.p50_ms for r in results["direct"]])
                direct_p99 = harness.median([r.p99_ms for r in results["direct"]])
                gateway_p50 = harness.median([r.p50_ms for r in results["gateway"]])
                gateway_p99 = harness.median([r.p99_ms for r in results["gateway"]])
                direct_rps = harness.median([r.rps for r in results["direct"]])
                gateway_rps = harness.median([r.rps for r in results["gateway"]])
                rows.append(
                    (
                        concurrency,
                        direct_p50,
                        gateway_p50,
                        gateway_p50 - direct_p50,
                        direct_p99,
                        gateway_p99,
                        gateway_p99 - direct_p99,
                        direct_rps,
                        gateway_rps,
                    )
                )
        finally:
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    print(
        f"Gateway overhead, medians of {ROUNDS} rounds of {SECONDS} s each "
        "(ms; requests per second of one worker process; load from wrk)\n"
    )
    print(
        "| concurrency | direct p50 | gateway p50 | added p50 | direct p99 | gateway p99 "
        "| added p99 | direct rps | gateway rps |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.0f} | {:.0f} |".format(*row))


if __name__ == "__main__":
    main()

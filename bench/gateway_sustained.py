"""Sustained load: one gateway worker at concurrency 16 for six minutes, reported per minute.

Run: make bench BENCH=gateway_sustained. The set-up is gateway_overhead's (auth, an RPM limit
checked in Redis on every request, usage events on, the simulator answering at once). The
circuit breaker counts outcomes over a 60 s window: the first minute fills it, the next five
run with it full, so a per-request cost that grows with the window shows up as falling
throughput or rising latency. Each minute is one wrk run (bench/load.py).

The usage stream is trimmed every few seconds by this script, standing in for ingestion
(which would otherwise compete for the same two cores), so Redis memory stays flat.
"""

import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import load

MINUTES = 6
MINUTE_SECONDS = 60
CONCURRENCY = 16
TARGET_RPS = 2_500
P99_GROWTH_LIMIT = 1.2


def trim_usage_stream(stop: threading.Event) -> None:
    from fleet.redis_client import redis_client, redis_keys

    client, stream = redis_client(), redis_keys().usage_stream
    while not stop.wait(5):
        client.xtrim(stream, maxlen=10_000, approximate=True)


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        _org, _team, (key,) = harness.seed(simulator_url, rpm_limit=1_000_000)
        from fleet import services

        services.publish_pending()
        gateway, gateway_url = harness.start_gateway("bench-sustained", Path(tempfile.mkdtemp()))
        stop = threading.Event()
        trimmer = threading.Thread(target=trim_usage_stream, args=(stop,), daemon=True)
        trimmer.start()
        minutes: list[load.LoadResult] = []
        try:
            for minute in range(1, MINUTES + 1):
                result = load.run_wrk(gateway_url, key, concurrency=CONCURRENCY, seconds=MINUTE_SECONDS)
                minutes.append(result)
                print(
                    f"minute {minute}: {result.rps:,.0f} rps, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            stop.set()
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    print(f"Sustained load: one worker, concurrency {CONCURRENCY}, {MINUTES} minutes (load from wrk)\n")
    print("| minute | breaker window | requests/s | p50 ms | p99 ms | max ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for number, result in enumerate(minutes, start=1):
        window = "filling" if number == 1 else "full"
        errors = result.bad_status + result.socket_errors
        print(
            f"| {number} | {window} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
            f"| {result.max_ms:.1f} | {errors} |"
        )
    slowest = min(result.rps for result in minutes)
    growth = minutes[-1].p99_ms / minutes[0].p99_ms
    print(
        f"\nSlowest minute {slowest:,.0f} requests/s (target at least {TARGET_RPS:,}: "
        f"{'met' if slowest >= TARGET_RPS else 'NOT met'}); last-minute p99 is {growth:.2f}x the first "
        f"(target at most {P99_GROWTH_LIMIT}x: {'met' if growth <= P99_GROWTH_LIMIT else 'NOT met'})."
    )


if __name__ == "__main__":
    main()

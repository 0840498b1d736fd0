"""Gateway overhead: the same load against the simulator directly and through the gateway.

Run: make bench BENCH=gateway_overhead   (or: .venv/bin/python scripts/with_services.py
.venv/bin/python bench/gateway_overhead.py). Prints a Markdown table for bench/RESULTS.md.

Each round sends the same requests (non-streaming chat completions, the simulator answering
at once) at concurrency 1 and 16, first directly to the simulator, then through one gateway
worker process with auth, RPM limits (in Redis) and usage events on. Figures are medians
over rounds; the added latency is gateway minus direct, measured side by side.
"""

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

ROUNDS = 5
REQUESTS = {1: 400, 16: 2000}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}


async def load(url: str, key: str, concurrency: int, total: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        headers = {"Authorization": f"Bearer {key}"}
        endpoint = f"{url}/v1/chat/completions"
        remaining = total

        async def send() -> None:
            async with client.post(endpoint, json=BODY, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: {response.status}")

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                await send()
                latencies.append(time.perf_counter() - started)

        for _ in range(20):  # warm the connections
            await send()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, total / elapsed


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        _org, _team, (key,) = harness.seed(simulator_url, rpm_limit=1_000_000)
        from fleet import services

        services.publish_pending()
        gateway, gateway_url = harness.start_gateway("bench-overhead", Path(tempfile.mkdtemp()))
        try:
            rows = []
            for concurrency, total in REQUESTS.items():
                results = {"direct": [], "gateway": []}
                for _ in range(ROUNDS):
                    for target, url in (("direct", simulator_url), ("gateway", gateway_url)):
                        latencies, rps = asyncio.run(load(url, key, concurrency, total))
                        results[target].append(
                            (harness.percentile(latencies, 0.5), harness.percentile(latencies, 0.99), rps)
                        )
                direct_p50 = harness.median([r[0] for r in results["direct"]]) * 1000
                direct_p99 = harness.median([r[1] for r in results["direct"]]) * 1000
                gateway_p50 = harness.median([r[0] for r in results["gateway"]]) * 1000
                gateway_p99 = harness.median([r[1] for r in results["gateway"]]) * 1000
                direct_rps = harness.median([r[2] for r in results["direct"]])
                gateway_rps = harness.median([r[2] for r in results["gateway"]])
                rows.append(
                    (
                        concurrency,
                        total,
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
    print(f"Gateway overhead, medians of {ROUNDS} rounds (ms; requests per second of one worker process)\n")
    print(
        "| concurrency | requests/round | direct p50 | gateway p50 | added p50 | direct p99 | gateway p99 "
        "| added p99 | direct rps | gateway rps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.0f} | {:.0f} |".format(*row))


if __name__ == "__main__":
    main()

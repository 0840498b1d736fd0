"""SLA failover: one of two deployments fails half its requests.

Run: make bench BENCH=sla_failover. A route with two simulator deployments under the default
SLA policy (priority fallback, retries on 5xx, circuit breaker). The same load runs twice,
side by side: once with both deployments healthy, once with the primary failing 50% of its
requests. Reports the client-visible error rate and the added p50/p99 latency.
"""

import asyncio
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

REQUESTS = 2000
CONCURRENCY = 8
ROUNDS = 3
BODY = {"model": "duo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


async def load(url: str, key: str) -> tuple[list[float], int]:
    latencies, errors, remaining = [], 0, REQUESTS
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {key}"}

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(f"{url}/v1/chat/completions", json=BODY, headers=headers) as response:
                    await response.read()
                    errors += response.status != 200
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies, errors


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        from audit.context import Actor
        from fleet import services
        from keys.services import create_credential, issue_key
        from orgs.models import Team
        from sla.services import create_deployment, create_route

        org, team, _ = harness.seed(simulator_url, keys=1)
        system = Actor.system("bench")
        credential = create_credential(
            actor=system,
            org=org,
            name="Sim 2",
            provider="openai_compatible",
            base_url=f"{simulator_url}/v1",
            secrets={"api_key": "sk-bench-000000000"},
        )
        targets = [
            create_deployment(
                actor=system,
                org=org,
                name=name,
                credential=credential,
                upstream_model=model,
                input_price_per_mtok=Decimal(1),
                output_price_per_mtok=Decimal(4),
            )
            for name, model in (("primary", "a-model"), ("backup", "b-model"))
        ]
        create_route(actor=system, org=org, alias="duo", deployments=targets)
        _key, plaintext = issue_key(actor=system, team=Team.objects.get(pk=team.pk), name="sla bench")
        services.publish_pending()
        gateway, url = harness.start_gateway("bench-sla", Path(tempfile.mkdtemp()))
        results = {"healthy": [], "primary failing 50%": []}
        try:
            for _ in range(ROUNDS):
                for label, fail_rate in (("healthy", 0.0), ("primary failing 50%", 0.5)):
                    httpx.post(
                        f"{simulator_url}/_sim/config",
                        json={"models": {"a-model": {"fail_rate": fail_rate, "fail_status": 500}}},
                    )
                    latencies, errors = asyncio.run(load(url, plaintext))
                    results[label].append(
                        (harness.percentile(latencies, 0.5), harness.percentile(latencies, 0.99), errors)
                    )
        finally:
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    healthy_p50 = harness.median([r[0] for r in results["healthy"]]) * 1000
    healthy_p99 = harness.median([r[1] for r in results["healthy"]]) * 1000
    print(f"SLA failover: {REQUESTS} requests x {ROUNDS} rounds at concurrency {CONCURRENCY} (ms; medians)\n")
    print("| primary | client-visible errors | p50 | p99 | added p50 | added p99 |")
    print("|---|---|---|---|---|---|")
    for label, rows in results.items():
        p50 = harness.median([r[0] for r in rows]) * 1000
        p99 = harness.median([r[1] for r in rows]) * 1000
        errors = sum(r[2] for r in rows)
        print(
            f"| {label} | {errors} of {REQUESTS * ROUNDS} ({errors / (REQUESTS * ROUNDS):.2%}) | {p50:.2f} "
            f"| {p99:.2f} | {p50 - healthy_p50:.2f} | {p99 - healthy_p99:.2f} |"
        )


if __name__ == "__main__":
    main()

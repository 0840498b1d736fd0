"""Added latency of budget admission: the same requests through one gateway worker with a key
under three budgets (its own, its team's, its org's) and a key under none, side by side.

Run: make bench BENCH=budget_admission. Both keys have no rate limits, so the only Redis
round trips that differ are the reserve and settle scripts. Medians over rounds.
"""

import asyncio
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

ROUNDS = 5
REQUESTS = 1000
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}


async def latencies(url: str, key: str) -> list[float]:
    values = []
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {key}"}
        for i in range(REQUESTS + 50):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=BODY, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
            if i >= 50:  # the first 50 warm the connections
                values.append(time.perf_counter() - started)
    return values


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        org, team, (budgeted, _second) = harness.seed(simulator_url, keys=2)
        from audit.context import Actor
        from budgets.services import create_budget
        from fleet import services
        from keys.models import CallerKey

        system = Actor.system("bench")
        key = CallerKey.objects.filter(org=org).order_by("created_at").first()
        create_budget(actor=system, org=org, name="org", scope="org", amount=Decimal(1_000_000), period="monthly")
        create_budget(
            actor=system, org=org, name="team", scope="team", team=team, amount=Decimal(1_000_000), period="daily"
        )
        create_budget(
            actor=system, org=org, name="key", scope="key", key=key, amount=Decimal(1_000_000), period="total"
        )
        # The second key must not fall under the org and team budgets: it gets an org of its own.
        _org2, _team2, (free,) = harness.seed(simulator_url, keys=1, suffix="free")
        services.publish_pending()
        gateway, url = harness.start_gateway("bench-budgets", Path(tempfile.mkdtemp()))
        try:
            rows = {"without budgets": [], "under 3 budgets": []}
            for _ in range(ROUNDS):
                rows["without budgets"].append(harness.percentile(asyncio.run(latencies(url, free)), 0.5))
                rows["under 3 budgets"].append(harness.percentile(asyncio.run(latencies(url, budgeted)), 0.5))
        finally:
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    base = harness.median(rows["without budgets"]) * 1000
    budgets = harness.median(rows["under 3 budgets"]) * 1000
    print(f"Budget admission, concurrency 1, {REQUESTS} requests x {ROUNDS} rounds (median of round p50s, ms)\n")
    print("| without budgets p50 | under 3 budgets p50 | added by admission |")
    print("|---|---|---|")
    print(f"| {base:.3f} | {budgets:.3f} | {budgets - base:.3f} |")


if __name__ == "__main__":
    main()

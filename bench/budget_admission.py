"""Added latency of budget admission: the same requests through one gateway worker with a key
under three budgets (its own, its team's, its org's) and a key under none, side by side.

Run: make bench BENCH=budget_admission. Both keys have no rate limits, so the only Redis
work that differs is the admission script before the call (one round trip) and the settle
script after it. Load from wrk at concurrency 1 (bench/load.py); medians over rounds.
"""

import sys
import tempfile
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import load

ROUNDS = 5
SECONDS = 5


def p50(url: str, key: str) -> float:
    result = load.run_wrk(url, key, concurrency=1, seconds=SECONDS)
    if result.bad_status or result.socket_errors:
        raise RuntimeError(str(result))
    return result.p50_ms / 1000


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
            load.run_wrk(url, free, concurrency=1, seconds=2)  # warm up
            load.run_wrk(url, budgeted, concurrency=1, seconds=2)
            rows = {"without budgets": [], "under 3 budgets": []}
            for _ in range(ROUNDS):
                rows["without budgets"].append(p50(url, free))
                rows["under 3 budgets"].append(p50(url, budgeted))
        finally:
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    base = harness.median(rows["without budgets"]) * 1000
    budgets = harness.median(rows["under 3 budgets"]) * 1000
    print(f"Budget admission, concurrency 1, {ROUNDS} rounds of {SECONDS} s (median of round p50s, ms)\n")
    print("| without budgets p50 | under 3 budgets p50 | added by admission |")
    print("|---|---|---|")
    print(f"| {base:.3f} | {budgets:.3f} | {budgets - base:.3f} |")


if __name__ == "__main__":
    main()

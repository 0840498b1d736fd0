"""Reading a budget's gateway counters once every admitted request has settled."""

import time
from datetime import UTC, datetime

from fleet.redis_client import redis_keys
from gateway.budgets import period_bounds

# The simulator counts "Hello" as 6 prompt tokens and answers max_tokens=16: 6 x $2.50/M + 16 x $10/M.
HELLO_COST_MICROS = (6 * 2_500_000 + 16 * 10_000_000) // 1_000_000


def settled_counters(client, budget, timeout: float = 5) -> dict[str, int]:
    """The budget's `spent` and `held` for its current period, once nothing is held any more
    (settles run just after each answer), or as they are after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        label, _ = period_bounds(budget.period, datetime.now(UTC))
        raw = client.hgetall(redis_keys().budget(str(budget.org_id), str(budget.pk), label))
        counters = {name.decode(): int(value) for name, value in raw.items()}
        if counters.get("held", 0) == 0 or time.monotonic() > deadline:
            return {"spent": counters.get("spent", 0), "held": counters.get("held", 0)}
        time.sleep(0.05)

"""Rebuilding the gateway's budget counters from the ledger (promise 1: Redis holds only what
PostgreSQL can rebuild).

The counter for a budget's current period becomes max(its Redis `spent`, the ledger's spend) in
micro-dollars, in one Lua script so no settle lands between the read and the write. The max
keeps it idempotent, never undercounts a request the gateway settled but ingestion has not yet
written, and after Redis lost its data restores the ledger's figure. Open holds (reservations)
are left alone, except those past their expiry: a worker that crashed mid-request never settles
them, so reconciliation gives them back (the gateway releases them too, at the org's next
admission).
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

from fleet.redis_client import redis_client, redis_keys
from gateway.budgets import KEEP_AFTER_PERIOD_SECONDS, RELEASE, period_bounds

from .models import Budget
from .spend import budget_spend, rollup_spends

log = logging.getLogger("budgets.reconcile")

MICROS = Decimal(1_000_000)

# KEYS: the budget's counters hash. ARGV: ledger spend in micro-dollars, ttl (0: none).
RAISE_SPENT = """
local before = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local ledger, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local after = before
if ledger > before then
    redis.call('HSET', KEYS[1], 'spent', ARGV[1])  -- the string: Lua would print a big number as 1e+15
    after = ledger
    if ttl > 0 and redis.call('TTL', KEYS[1]) < 0 then
        redis.call('EXPIRE', KEYS[1], ttl)
    end
end
return {before, after}
"""


@dataclass(frozen=True)
class Reconciled:
    budget_id: str
    period_label: str
    before: int  # micro-dollars in Redis before
    after: int  # and after
    ledger: int  # what the ledger says

    @property
    def changed(self) -> bool:
        return self.before != self.after


def to_micros(amount: Decimal) -> int:
    # The ledger keeps six places, so this is exact; rounding up only guards a future change.
    return int((amount * MICROS).to_integral_value(rounding=ROUND_CEILING))


def reconcile_budget(budget: Budget, now: datetime | None = None, spend: Decimal | None = None) -> Reconciled:
    """Raise the gateway's `spent` for the budget's current period to the ledger's, if below.
    `spend`: the period's spend as the hourly rollups give it (reconcile_all); without it, the
    ledger is summed (the "Rebuild counters" button, one budget at a time)."""
    now = now or datetime.now(UTC)
    label, end = period_bounds(budget.period, now)
    key = redis_keys().budget(str(budget.org_id), str(budget.pk), label)
    ledger = to_micros(spend if spend is not None else budget_spend(budget, now))
    ttl = int((end - now).total_seconds()) + KEEP_AFTER_PERIOD_SECONDS if end else 0
    before, after = redis_client().eval(RAISE_SPENT, 1, key, ledger, ttl)
    return Reconciled(str(budget.pk), label, int(before), int(after), ledger)


def release_expired_holds(org_ids: list[str], now: datetime) -> int:
    """Give back the holds of these orgs that expired before `now` (their worker died before
    settling); the number released."""
    keys = redis_keys()
    pipe = redis_client().pipeline(transaction=False)
    for org_id in org_ids:
        pipe.eval(RELEASE, 1, keys.budget_holds(org_id), now.timestamp(), keys.budget_prefix(org_id))
    return sum(int(released) for released in pipe.execute())


def reconcile_all(now: datetime | None = None) -> list[Reconciled]:
    """Release every org's expired holds, then reconcile every budget of every org."""
    now = now or datetime.now(UTC)
    org_ids = sorted({str(org_id) for org_id in Budget.objects.values_list("org_id", flat=True)})
    released = release_expired_holds(org_ids, now)
    if released:
        log.warning("released %d budget holds left by workers that stopped before settling", released)
    results = []
    # The rollups hold the ledger's sums (ingestion writes both in one statement): one query
    # per org for all its budgets, whatever the ledger's size.
    for org_id in org_ids:
        budgets = list(Budget.objects.filter(org_id=org_id).order_by("pk"))
        spends = rollup_spends(budgets, now)
        results += [reconcile_budget(budget, now, spends[budget.pk]) for budget in budgets]
    return results

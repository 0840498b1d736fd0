"""Budget admission: reserve the worst case before the upstream call, settle the actual cost
after, in one Lua script each, atomically across every budget that applies (key, team, org)
and across every worker.

Counters live in Redis per budget and period (`<prefix>:budget:<id>:<period label>`), so a new
period starts at its UTC boundary with no reset job. A reservation carries an id and an
expiry: a crashed worker's reservation is released by the next script that looks, and a
settle that runs twice counts once.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as redis

from .config import BudgetConfig
from .errors import GatewayError
from .redis_keys import RedisKeys

RESERVATION_SECONDS = 600  # longer than any upstream call may take (the timeout is 120 s)

# KEYS: per budget, its counters hash, its reservations zset (id -> expiry), its amounts hash.
# ARGV: now, reservation expiry, amount, reservation id, then per budget: limit (0: soft), key ttl.
RESERVE = """
local now, expiry, amount, id = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local count = #KEYS / 3
for i = 1, count do
    local counters, open, amounts = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    for _, stale in ipairs(redis.call('ZRANGEBYSCORE', open, '-inf', now)) do
        local held = tonumber(redis.call('HGET', amounts, stale) or '0')
        redis.call('HINCRBY', counters, 'reserved', -held)
        redis.call('HDEL', amounts, stale)
        redis.call('ZREM', open, stale)
    end
    local limit = tonumber(ARGV[3 + 2 * i])
    if limit > 0 then
        local spent = tonumber(redis.call('HGET', counters, 'spent') or '0')
        local reserved = tonumber(redis.call('HGET', counters, 'reserved') or '0')
        if spent + reserved + amount > limit then
            return {i, spent, reserved}
        end
    end
end
for i = 1, count do
    local counters, open, amounts = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    redis.call('HINCRBY', counters, 'reserved', amount)
    redis.call('ZADD', open, expiry, id)
    redis.call('HSET', amounts, id, amount)
    local ttl = tonumber(ARGV[4 + 2 * i])
    if ttl > 0 then
        redis.call('EXPIRE', counters, ttl)
        redis.call('EXPIRE', open, ttl)
        redis.call('EXPIRE', amounts, ttl)
    end
end
return {0}
"""

# KEYS as above. ARGV: reservation id, actual cost (0 to release).
SETTLE = """
local id, actual = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS / 3 do
    local counters, open, amounts = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    local held = redis.call('HGET', amounts, id)
    if held ~= 'settled' then
        if held then
            redis.call('HINCRBY', counters, 'reserved', -tonumber(held))
            redis.call('ZREM', open, id)
        end
        redis.call('HINCRBY', counters, 'spent', actual)
        redis.call('HSET', amounts, id, 'settled')
    end
end
return 1
"""


def period_bounds(period: str, now: datetime) -> tuple[str, datetime | None]:
    """(label, end) of the calendar period in UTC containing `now`."""
    if period == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y%m%d"), start + timedelta(days=1)
    if period == "weekly":
        start = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("w%Y%m%d"), start + timedelta(days=7)
    if period == "monthly":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return start.strftime("m%Y%m"), end
    return "total", None


@dataclass(frozen=True)
class Admission:
    reservation_id: str
    keys: list[str]


class BudgetGate:
    def __init__(self, client: redis.Redis, keys: RedisKeys):
        self.client, self.keys = client, keys
        self.reserve_script = client.register_script(RESERVE)
        self.settle_script = client.register_script(SETTLE)

    def _keys_and_args(self, budgets: list[BudgetConfig], now: datetime) -> tuple[list[str], list, list]:
        keys, limits, labels = [], [], []
        for budget in budgets:
            label, end = period_bounds(budget.period, now)
            base = self.keys.budget(budget.id, label)
            keys += [base, base + ":open", base + ":amounts"]
            ttl = int((end - now).total_seconds()) + 7 * 86_400 if end else 0  # kept a week for reconciliation
            limits += [budget.amount_micros if budget.hard else 0, ttl]
            labels.append((label, end))
        return keys, limits, labels

    async def reserve(self, budgets: list[BudgetConfig], amount_micros: int, reservation_id: str) -> Admission:
        now = datetime.now(UTC)
        keys, limits, labels = self._keys_and_args(budgets, now)
        result = await self.reserve_script(
            keys=keys,
            args=[now.timestamp(), now.timestamp() + RESERVATION_SECONDS, amount_micros, reservation_id, *limits],
        )
        if result[0]:
            budget = budgets[result[0] - 1]
            _label, end = labels[result[0] - 1]
            spent = (int(result[1]) + int(result[2])) / 1_000_000
            ends = f"until {end:%Y-%m-%d %H:%M} UTC" if end else "in total"
            raise GatewayError(
                402,
                "budget_exceeded",
                f"The {budget.scope} budget {budget.name!r} of ${budget.amount_micros / 1_000_000:,.2f} {ends} "
                f"has ${spent:,.2f} spent or reserved; this request could cost up to "
                f"${amount_micros / 1_000_000:,.6f}.",
            )
        return Admission(reservation_id, keys)

    async def settle(self, admission: Admission, actual_micros: int) -> None:
        await self.settle_script(keys=admission.keys, args=[admission.reservation_id, max(0, actual_micros)])

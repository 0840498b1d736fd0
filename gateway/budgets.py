"""Admission in one Redis round trip: the key's RPM/TPM windows and a reservation of the
worst case on every budget that applies (key, team, org), atomically across every worker;
then, after the answer, settling the actual cost.

Budget counters live in Redis per budget and period (`<prefix>:budget:<id>:<period label>`),
so a new period starts at its UTC boundary with no reset job. A reservation carries an id and
an expiry: a crashed worker's reservation is released by the next script that looks, and a
settle that runs twice counts once. Rate windows are fixed minutes (gateway/rate_limits.py).
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as redis

from .config import BudgetConfig
from .errors import GatewayError
from .rate_limits import rate_limited
from .redis_keys import RedisKeys
from .redis_pipe import RedisPipe

RESERVATION_SECONDS = 600  # longer than any upstream call may take (the timeout is 120 s)

# KEYS: the RPM window, the TPM window, then per budget: its counters hash, its reservations
# zset (id -> expiry), its amounts hash.
# ARGV: rpm limit, tpm limit (0: none), now, reservation expiry, amount, reservation id, then
# per budget: limit (0: soft), key ttl.
# Returns {0} when admitted, {-1} over RPM, {-2} over TPM, {i, spent, reserved} when budget i
# would be crossed. A request refused by a budget still counts against RPM, as it was sent.
ADMIT = """
local rpm_limit, tpm_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm_limit > 0 then
    local used = tonumber(redis.call('GET', KEYS[2]) or '0')
    if used >= tpm_limit then return {-2} end
end
if rpm_limit > 0 then
    local count = redis.call('INCR', KEYS[1])
    if count == 1 then redis.call('EXPIRE', KEYS[1], 120) end
    if count > rpm_limit then return {-1} end
end
local now, expiry, amount, id = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local count = (#KEYS - 2) / 3
for i = 1, count do
    local counters, open, amounts = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
    for _, stale in ipairs(redis.call('ZRANGEBYSCORE', open, '-inf', now)) do
        local held = tonumber(redis.call('HGET', amounts, stale) or '0')
        redis.call('HINCRBY', counters, 'reserved', -held)
        redis.call('HDEL', amounts, stale)
        redis.call('ZREM', open, stale)
    end
    local limit = tonumber(ARGV[5 + 2 * i])
    if limit > 0 then
        local spent = tonumber(redis.call('HGET', counters, 'spent') or '0')
        local reserved = tonumber(redis.call('HGET', counters, 'reserved') or '0')
        if spent + reserved + amount > limit then
            return {i, spent, reserved}
        end
    end
end
for i = 1, count do
    local counters, open, amounts = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
    redis.call('HINCRBY', counters, 'reserved', amount)
    redis.call('ZADD', open, expiry, id)
    redis.call('HSET', amounts, id, amount)
    local ttl = tonumber(ARGV[6 + 2 * i])
    if ttl > 0 then
        redis.call('EXPIRE', counters, ttl)
        redis.call('EXPIRE', open, ttl)
        redis.call('EXPIRE', amounts, ttl)
    end
end
return {0}
"""

# KEYS: the budget keys of ADMIT (three per budget). ARGV: reservation id, actual cost (0 to release).
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
    """A budget reservation to settle after the answer."""

    reservation_id: str
    keys: list[str]


class BudgetGate:
    """The gateway passes its pipelined connection (gateway/redis_pipe.py); tools and tests
    may pass a redis-py client."""

    def __init__(self, client: RedisPipe | redis.Redis, keys: RedisKeys):
        self.keys = keys
        register = client.script if isinstance(client, RedisPipe) else client.register_script
        self.admit_script = register(ADMIT)
        self.settle_script = register(SETTLE)

    def _budget_keys_and_args(
        self, budgets: list[BudgetConfig], now: datetime
    ) -> tuple[list[str], list[int], list[datetime | None]]:
        keys: list[str] = []
        args: list[int] = []
        ends: list[datetime | None] = []
        for budget in budgets:
            label, end = period_bounds(budget.period, now)
            base = self.keys.budget(budget.id, label)
            keys += [base, base + ":open", base + ":amounts"]
            ttl = int((end - now).total_seconds()) + 7 * 86_400 if end else 0  # kept a week for reconciliation
            args += [budget.amount_micros if budget.hard else 0, ttl]
            ends.append(end)
        return keys, args, ends

    async def admit(
        self,
        *,
        key_id: str,
        rpm_limit: int | None,
        tpm_limit: int | None,
        budgets: list[BudgetConfig],
        amount_micros: int,
        reservation_id: str,
    ) -> tuple[int, Admission | None]:
        """(the current minute, the reservation or None) if admitted; GatewayError 429 or 402
        if not. No Redis call at all when the key has neither limits nor budgets."""
        moment = time.time()
        minute = int(moment // 60)
        if not rpm_limit and not tpm_limit and not budgets:
            return minute, None
        now = datetime.fromtimestamp(moment, UTC)
        budget_keys, budget_args, ends = self._budget_keys_and_args(budgets, now)
        result = await self.admit_script(
            keys=[
                self.keys.rate_window(key_id, "rpm", minute),
                self.keys.rate_window(key_id, "tpm", minute),
                *budget_keys,
            ],
            args=[
                rpm_limit or 0,
                tpm_limit or 0,
                moment,
                moment + RESERVATION_SECONDS,
                amount_micros,
                reservation_id,
                *budget_args,
            ],
        )
        outcome = int(result[0])
        if outcome < 0:
            raise rate_limited("requests" if outcome == -1 else "tokens", moment)
        if outcome > 0:
            held = int(result[1]) + int(result[2])
            raise budget_exceeded(budgets[outcome - 1], ends[outcome - 1], held, amount_micros)
        return minute, Admission(reservation_id, budget_keys) if budgets else None

    async def reserve(self, budgets: list[BudgetConfig], amount_micros: int, reservation_id: str) -> Admission:
        """Budgets alone (reconciliation tests and tools): reserve or raise GatewayError 402."""
        _minute, admission = await self.admit(
            key_id="",
            rpm_limit=None,
            tpm_limit=None,
            budgets=budgets,
            amount_micros=amount_micros,
            reservation_id=reservation_id,
        )
        assert admission is not None  # noqa: S101  (budgets is not empty)
        return admission

    async def settle(self, admission: Admission, actual_micros: int) -> None:
        await self.settle_script(keys=admission.keys, args=[admission.reservation_id, max(0, actual_micros)])


def budget_exceeded(budget: BudgetConfig, end: datetime | None, held_micros: int, amount_micros: int) -> GatewayError:
    ends = f"until {end:%Y-%m-%d %H:%M} UTC" if end else "in total"
    return GatewayError(
        402,
        "budget_exceeded",
        f"The {budget.scope} budget {budget.name!r} of ${budget.amount_micros / 1_000_000:,.2f} {ends} "
        f"has ${held_micros / 1_000_000:,.2f} spent or reserved; this request could cost up to "
        f"${amount_micros / 1_000_000:,.6f}.",
    )

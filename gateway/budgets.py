"""Admission in one Redis round trip: the key's RPM/TPM windows and a hold on every budget that
applies (key, team, org) for the request's worst case, atomically across every worker; then,
after the answer, settling the actual cost.

In Redis, per budget and period, a hash of counters (`<prefix>:{<org id>}:budget:<id>:<period label>`):
`spent`, settled micro-dollars, and `held`, the sum of open holds. So a new period starts at
its UTC boundary with no reset job. Per org, a sorted set of its open holds
(`<prefix>:{<org id>}:holds`), scored by expiry, each member `<amount>|<hold id>|<budget ref>…`
naming the counters it holds on. Settling removes the member first, so a settle that runs
twice counts once. A crashed worker's holds are released when they expire (RESERVATION_SECONDS,
far beyond the upstream timeout), by the org's next admission or by reconciliation, whichever
comes first. A settle that comes after its hold expired adds nothing to `spent`; reconciliation
raises `spent` to the ledger's figure within a minute (budgets/reconcile.py). Rate windows are
fixed minutes (gateway/rate_limits.py).
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as redis

from .config import BudgetConfig
from .errors import GatewayError
from .rate_limits import rate_limited
from .redis_cluster_pipe import ClusterPipe, Pipe
from .redis_keys import RedisKeys
from .redis_pipe import RedisPipe

RESERVATION_SECONDS = 600  # longer than any upstream call may take (the timeout is 120 s)
KEEP_AFTER_PERIOD_SECONDS = 7 * 86_400  # counters outlive their period a week, for reconciliation
DAY = 86_400

# Releases an org's expired holds (zset `holds`) as of `now`: each gives its amount back on the
# counters it names (`counters_prefix` .. ref). Returns how many it released.
RELEASE_EXPIRED = """
local function release_expired(holds, now, counters_prefix)
    local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
    for _, member in ipairs(expired) do
        local fields = {}
        for field in string.gmatch(member, '[^|]+') do fields[#fields + 1] = field end
        local amount = tonumber(fields[1]) or 0
        for j = 3, #fields do
            redis.call('HINCRBY', counters_prefix .. fields[j], 'held', -amount)
        end
    end
    if #expired > 0 then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now) end
    return #expired
end
"""

# KEYS: the RPM window, the TPM window, the org's holds, then each budget's counters.
# ARGV: rpm limit, tpm limit (0: none), now, hold expiry, amount, hold member, counters prefix,
# then per budget: limit (0: soft), counters ttl (0: none).
# Returns {0} when admitted, {-1} over RPM, {-2} over TPM, {i, spent, held} when budget i
# would be crossed. A request refused by a budget still counts against RPM, as it was sent.
ADMIT = (
    RELEASE_EXPIRED
    + """
local rpm_limit, tpm_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local count, used = 0, 0  -- this minute's requests (this one included) and tokens
if tpm_limit > 0 then
    used = tonumber(redis.call('GET', KEYS[2]) or '0')
    if used >= tpm_limit then return {-2, 0, used} end
end
if rpm_limit > 0 then
    count = redis.call('INCR', KEYS[1])
    if count == 1 then redis.call('EXPIRE', KEYS[1], 120) end
    if count > rpm_limit then return {-1, count, used} end
end
if #KEYS == 2 then return {0, count, used} end  -- limits only, no budgets
local amount = tonumber(ARGV[5])
release_expired(KEYS[3], ARGV[3], ARGV[7])
for i = 4, #KEYS do
    local limit = tonumber(ARGV[2 * i])
    if limit > 0 then
        local values = redis.call('HMGET', KEYS[i], 'spent', 'held')
        local spent, held = tonumber(values[1] or '0'), tonumber(values[2] or '0')
        if spent + held + amount > limit then
            return {i - 3, spent, held}
        end
    end
end
for i = 4, #KEYS do
    -- A counters hash with nothing held was just created, or may be: give it its ttl.
    if redis.call('HINCRBY', KEYS[i], 'held', amount) == amount then
        local ttl = tonumber(ARGV[2 * i + 1])
        if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
    end
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
return {0, count, used}
"""
)

# KEYS: the org's holds, then the counters of ADMIT. ARGV: hold member, its amount, actual cost
# (0 to release). A hold already settled, or released as expired, is left alone.
SETTLE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
    local amount, actual = tonumber(ARGV[2]), tonumber(ARGV[3])
    for i = 2, #KEYS do
        redis.call('HINCRBY', KEYS[i], 'held', -amount)
        if actual > 0 then redis.call('HINCRBY', KEYS[i], 'spent', actual) end
    end
end
return 1
"""

# KEYS: an org's holds. ARGV: now, counters prefix. Returns how many holds it released.
RELEASE = RELEASE_EXPIRED + "\nreturn release_expired(KEYS[1], ARGV[1], ARGV[2])\n"


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
    """What to settle after the answer: the hold and the keys it lives in."""

    hold: str  # the member in the org's holds
    amount_micros: int
    keys: list[str]  # the org's holds, then each budget's counters


@dataclass(frozen=True)
class WindowUse:
    """A key's use of its one-minute windows, as admission found it."""

    requests: int  # this request included; 0 without an RPM limit
    tokens: int  # 0 without a TPM limit


NO_USE = WindowUse(0, 0)


class RateLimited(GatewayError):
    """A 429 from a key's RPM or TPM window, with the use that caused it."""

    def __init__(self, error: GatewayError, use: WindowUse):
        super().__init__(error.status, error.code, error.message, error.headers)
        self.use = use


class BudgetGate:
    """The gateway passes its pipelined connection (gateway/redis_pipe.py); tools and tests
    may pass a redis-py client."""

    def __init__(self, client: Pipe | redis.Redis, keys: RedisKeys):
        self.keys = keys
        register = client.script if isinstance(client, RedisPipe | ClusterPipe) else client.register_script
        self.admit_script = register(ADMIT)
        self.settle_script = register(SETTLE)
        # Every period boundary is a UTC midnight, so labels hold for a whole day.
        self._day = -1
        self._periods: dict[str, tuple[str, datetime | None]] = {}

    def period(self, period: str, moment: float) -> tuple[str, datetime | None]:
        """period_bounds, computed once a day."""
        day = int(moment // DAY)
        if day != self._day:
            self._day, self._periods = day, {}
        bounds = self._periods.get(period)
        if bounds is None:
            bounds = self._periods[period] = period_bounds(period, datetime.fromtimestamp(day * DAY, UTC))
        return bounds

    async def admit(
        self,
        *,
        org_id: str,
        key_id: str,
        rpm_limit: int | None,
        tpm_limit: int | None,
        budgets: list[BudgetConfig],
        amount_micros: int,
        reservation_id: str,
    ) -> tuple[int, Admission | None, WindowUse]:
        """(the current minute, the hold or None, the key's use of its windows) if admitted;
        RateLimited (429) or GatewayError 402 if not. No Redis call at all when the key has
        neither limits nor budgets."""
        moment = time.time()
        minute = int(moment // 60)
        if not rpm_limit and not tpm_limit and not budgets:
            return minute, None, NO_USE
        # Every key carries the org's hash tag (gateway/redis_keys.py): one Cluster slot.
        keys = [
            self.keys.rate_window(org_id, key_id, "rpm", minute),
            self.keys.rate_window(org_id, key_id, "tpm", minute),
        ]
        args: list[str | int | float] = [rpm_limit or 0, tpm_limit or 0, moment, moment + RESERVATION_SECONDS]
        hold = ""
        if budgets:
            keys.append(self.keys.budget_holds(org_id))  # all of a key's budgets are its org's
            counters = self.keys.budget_prefix(org_id)
            refs = []
            limits: list[int] = []
            for budget in budgets:
                label, end = self.period(budget.period, moment)
                ref = f"{budget.id}:{label}"
                refs.append(ref)
                keys.append(counters + ref)
                limits += (
                    budget.amount_micros if budget.hard else 0,
                    int(end.timestamp() - moment) + KEEP_AFTER_PERIOD_SECONDS if end else 0,
                )
            hold = f"{amount_micros}|{reservation_id}|{'|'.join(refs)}"
            args += (amount_micros, hold, counters, *limits)
        result = await self.admit_script(keys=keys, args=args)
        outcome = int(result[0])
        if outcome < 0:
            use = WindowUse(int(result[1]), int(result[2]))
            raise RateLimited(rate_limited("requests" if outcome == -1 else "tokens", moment), use)
        if outcome > 0:
            budget = budgets[outcome - 1]
            raise budget_exceeded(
                budget, self.period(budget.period, moment)[1], int(result[1]) + int(result[2]), amount_micros
            )
        use = WindowUse(int(result[1]), int(result[2]))
        return minute, Admission(hold, amount_micros, keys[2:]) if budgets else None, use

    async def reserve(self, budgets: list[BudgetConfig], amount_micros: int, reservation_id: str) -> Admission:
        """Budgets alone (reconciliation tests and tools): hold or raise GatewayError 402."""
        _minute, admission, _use = await self.admit(
            org_id=budgets[0].org_id,
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
        await self.settle_script(
            keys=admission.keys, args=[admission.hold, admission.amount_micros, max(0, actual_micros)]
        )


def budget_exceeded(budget: BudgetConfig, end: datetime | None, held_micros: int, amount_micros: int) -> GatewayError:
    ends = f"until {end:%Y-%m-%d %H:%M} UTC" if end else "in total"
    return GatewayError(
        402,
        "budget_exceeded",
        f"The {budget.scope} budget {budget.name!r} of ${budget.amount_micros / 1_000_000:,.2f} {ends} "
        f"has ${held_micros / 1_000_000:,.2f} spent or reserved; this request could cost up to "
        f"${amount_micros / 1_000_000:,.6f}.",
    )

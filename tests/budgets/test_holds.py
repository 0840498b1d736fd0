"""Budget holds in Redis (gateway/budgets.py), against the real server: one hold per request on
every budget that applies, settled exactly once, and released when a worker died holding it."""

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis.asyncio
from django.conf import settings

from fleet.redis_client import redis_keys
from gateway.budgets import RESERVATION_SECONDS, Admission, BudgetGate, period_bounds
from gateway.config import BudgetConfig
from gateway.errors import GatewayError

ORG = str(uuid.uuid4())


def budget(name: str, period: str, amount_micros: int, scope: str = "org") -> BudgetConfig:
    return BudgetConfig(
        id=str(uuid.uuid4()),
        org_id=ORG,
        name=name,
        scope=scope,
        scope_id=ORG,
        amount_micros=amount_micros,
        period=period,
        hard=True,
    )


def counters(client, config: BudgetConfig) -> dict[str, int]:
    label, _end = period_bounds(config.period, datetime.now(UTC))
    return {k.decode(): int(v) for k, v in client.hgetall(redis_keys().budget(config.org_id, config.id, label)).items()}


def run(steps):
    async def main():
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        try:
            return await steps(BudgetGate(client, redis_keys()))
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def three():
    return [budget("key", "total", 10_000), budget("team", "daily", 10_000), budget("org", "monthly", 10_000)]


def test_a_hold_lands_on_every_budget_and_settles_exactly_once(three, clean_redis):
    async def steps(gate: BudgetGate) -> Admission:
        admission = await gate.reserve(three, 4_000, uuid.uuid4().hex)
        assert all(counters(clean_redis, b) == {"held": 4_000} for b in three)
        await gate.settle(admission, 1_500)
        await gate.settle(admission, 1_500)  # a second settle of the same hold counts nothing
        return admission

    admission = run(steps)
    assert all(counters(clean_redis, b) == {"held": 0, "spent": 1_500} for b in three)
    assert clean_redis.zcard(admission.keys[0]) == 0  # the org's holds are empty again
    # Period counters expire a week after their period; the total budget's never do.
    assert clean_redis.ttl(admission.keys[1]) == -1
    assert 7 * 86_400 < clean_redis.ttl(admission.keys[2]) <= 8 * 86_400
    assert 7 * 86_400 < clean_redis.ttl(admission.keys[3]) <= 39 * 86_400


def test_the_tightest_budget_refuses_and_nothing_is_held(three, clean_redis):
    three[1] = budget("team", "daily", 3_000, scope="team")

    async def steps(gate: BudgetGate) -> None:
        with pytest.raises(GatewayError) as refused:
            await gate.reserve(three, 4_000, uuid.uuid4().hex)
        assert refused.value.status == 402 and "'team'" in refused.value.message
        admission = await gate.reserve(three, 3_000, uuid.uuid4().hex)  # exactly up to the cap
        with pytest.raises(GatewayError):
            await gate.reserve(three, 1, uuid.uuid4().hex)  # the hold counts until settled
        await gate.settle(admission, 0)  # released: the whole cap is free again
        await gate.settle(await gate.reserve(three, 3_000, uuid.uuid4().hex), 0)

    run(steps)
    assert all(counters(clean_redis, b).get("held", 0) == 0 for b in three)


def test_the_orgs_next_admission_releases_holds_a_dead_worker_left(three, clean_redis):
    async def steps(gate: BudgetGate) -> None:
        dead = await gate.reserve(three, 9_000, uuid.uuid4().hex)  # its worker dies: never settled
        with pytest.raises(GatewayError):
            await gate.reserve(three, 2_000, uuid.uuid4().hex)
        # Time passes beyond the hold's expiry (moved back rather than waited for).
        expired = time.time() - 1
        assert clean_redis.zadd(dead.keys[0], {dead.hold: expired}, xx=True, ch=True) == 1
        admission = await gate.reserve(three, 2_000, uuid.uuid4().hex)
        assert all(counters(clean_redis, b) == {"held": 2_000} for b in three)
        await gate.settle(dead, 9_000)  # too late: its hold is gone, and counts nothing
        await gate.settle(admission, 2_000)

    run(steps)
    assert all(counters(clean_redis, b) == {"held": 0, "spent": 2_000} for b in three)
    assert RESERVATION_SECONDS > 120  # beyond the upstream timeout

"""Rebuilding the gateway's budget counters from the ledger: after Redis lost its data, the
counter is back to the ledger's spend to the micro-dollar, and the gateway's own admission
script refuses what would cross the cap again."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio
from django.conf import settings

from budgets import tasks
from budgets.reconcile import reconcile_all, reconcile_budget
from budgets.services import create_budget
from fleet.redis_client import redis_keys
from gateway.budgets import BudgetGate, period_bounds
from gateway.config import BudgetConfig
from gateway.errors import GatewayError
from tests.budgets.test_alerts import (
    spend,  # through ingestion: the ledger row and its hourly rollup, as reconcile_all reads them
    wait_until,
)

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def counter_key(budget, now: datetime = NOW) -> str:
    label, _end = period_bounds(budget.period, now)
    return redis_keys().budget(str(budget.org_id), str(budget.pk), label)


def counters(client, budget, now: datetime = NOW) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(counter_key(budget, now)).items()}


@pytest.fixture
def budget(org, team, actors):
    return create_budget(
        actor=actors["finance"],
        org=org,
        name="Platform",
        scope="team",
        team=team,
        amount=Decimal("5.00"),
        period="daily",
    )


def test_after_redis_lost_its_data_the_ledger_restores_spent_to_the_micro_dollar(org, team, budget, clean_redis):
    for amount in ("1.234567", "0.000001", "2.5", "0.010203"):
        spend(org, team, amount)
    spend(org, team, "9.99", at=NOW - timedelta(days=1))  # yesterday's period
    key = counter_key(budget)
    clean_redis.hset(key, mapping={"spent": 3_744_771, "held": 0})
    for name in clean_redis.scan_iter(f"{key}*"):  # Redis lost everything
        clean_redis.delete(name)

    result = reconcile_budget(budget, now=NOW)
    assert (result.before, result.after, result.ledger) == (0, 3_744_771, 3_744_771)
    assert result.period_label == "d20250310"
    assert counters(clean_redis, budget) == {"spent": 3_744_771}
    # Kept until a week after the period ends, as the gateway keeps its own counters.
    assert 0 < clean_redis.ttl(key) <= (timedelta(days=8)).total_seconds()

    again = reconcile_budget(budget, now=NOW)  # run twice: nothing changes
    assert (again.before, again.after, again.changed) == (3_744_771, 3_744_771, False)
    assert counters(clean_redis, budget) == {"spent": 3_744_771}


def hold(client, budget, amount: int, expires: datetime) -> str:
    """An open hold on `budget`, as the gateway's admission script leaves it."""
    label, _end = period_bounds(budget.period, NOW)
    member = f"{amount}|{uuid.uuid4().hex}|{budget.pk}:{label}"
    client.hincrby(counter_key(budget), "held", amount)
    client.zadd(redis_keys().budget_holds(str(budget.org_id)), {member: expires.timestamp()})
    return member


def test_spend_the_gateway_settled_but_ingestion_has_not_written_is_kept(org, team, budget, clean_redis):
    spend(org, team, "1.00")
    clean_redis.hset(counter_key(budget), "spent", 1_500_000)
    member = hold(clean_redis, budget, 250_000, expires=NOW + timedelta(minutes=10))

    result = reconcile_budget(budget, now=NOW)
    assert (result.before, result.after, result.ledger) == (1_500_000, 1_500_000, 1_000_000)
    assert counters(clean_redis, budget) == {"spent": 1_500_000, "held": 250_000}
    assert clean_redis.zrange(redis_keys().budget_holds(str(org.pk)), 0, -1) == [member.encode()]


def test_a_lower_counter_is_raised_and_open_holds_are_left_alone(org, team, budget, clean_redis):
    spend(org, team, "2.000001")
    clean_redis.hset(counter_key(budget), "spent", 1_000_000)
    hold(clean_redis, budget, 40, expires=NOW + timedelta(minutes=10))
    result = reconcile_budget(budget, now=NOW)
    assert (result.before, result.after) == (1_000_000, 2_000_001)
    assert counters(clean_redis, budget) == {"spent": 2_000_001, "held": 40}


def test_holds_a_crashed_worker_left_are_released_once_expired(org, team, budget, actors, clean_redis):
    """A worker killed mid-request never settles its holds: once past their expiry,
    reconciliation gives them back, on every budget each names, and keeps the open ones."""
    org_budget = create_budget(
        actor=actors["finance"], org=org, name="Acme", scope="org", amount=Decimal("100"), period="monthly"
    )
    labels = {b: period_bounds(b.period, NOW)[0] for b in (budget, org_budget)}
    both = f"{budget.pk}:{labels[budget]}|{org_budget.pk}:{labels[org_budget]}"
    holds = redis_keys().budget_holds(str(org.pk))
    for b in (budget, org_budget):
        clean_redis.hset(counter_key(b), "held", 300 + 7)
    clean_redis.zadd(holds, {f"300|dead|{both}": (NOW - timedelta(seconds=1)).timestamp()})
    clean_redis.zadd(holds, {f"7|alive|{both}": (NOW + timedelta(minutes=5)).timestamp()})

    reconcile_all(now=NOW)
    assert counters(clean_redis, budget)["held"] == counters(clean_redis, org_budget)["held"] == 7
    assert clean_redis.zrange(holds, 0, -1) == [f"7|alive|{both}".encode()]
    reconcile_all(now=NOW)  # twice: nothing more is released
    assert counters(clean_redis, budget)["held"] == 7


def test_a_total_budget_counter_never_expires(org, team, actors, clean_redis):
    total = create_budget(
        actor=actors["finance"], org=org, name="Ever", scope="org", amount=Decimal("100"), period="total"
    )
    spend(org, team, "3.00", at=NOW - timedelta(days=900))
    result = reconcile_budget(total, now=NOW)
    assert (result.after, result.period_label) == (3_000_000, "total")
    assert clean_redis.ttl(counter_key(total)) == -1


def test_reconcile_all_covers_every_budget(org, team, budget, actors, clean_redis):
    org_budget = create_budget(
        actor=actors["finance"], org=org, name="Acme", scope="org", amount=Decimal("100"), period="monthly"
    )
    spend(org, team, "0.75")
    results = {result.budget_id: result for result in reconcile_all(now=NOW)}
    assert results[str(budget.pk)].after == 750_000
    assert results[str(org_budget.pk)].after == 750_000
    assert all(not result.changed for result in reconcile_all(now=NOW))


def test_the_gateway_refuses_again_after_reconciliation(org, team, budget, clean_redis):
    now = datetime.now(UTC)
    spend(org, team, "4.90", at=now)  # of $5.00
    config = BudgetConfig(
        id=str(budget.pk),
        org_id=str(org.pk),
        name=budget.name,
        scope="team",
        scope_id=str(team.pk),
        amount_micros=5_000_000,
        period="daily",
        hard=True,
    )

    async def reserve(amount_micros: int) -> None:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        try:
            gate = BudgetGate(client, redis_keys())
            admission = await gate.reserve([config], amount_micros, uuid.uuid4().hex)
            await gate.settle(admission, 0)  # release: only admission is under test
        finally:
            await client.aclose()

    asyncio.run(reserve(200_000))  # Redis knows nothing: $0.20 is admitted against an empty counter
    reconcile_budget(budget, now=now)
    with pytest.raises(GatewayError) as refused:
        asyncio.run(reserve(200_000))  # $4.90 + $0.20 would cross $5.00
    assert refused.value.code == "budget_exceeded"
    asyncio.run(reserve(100_000))  # exactly up to the cap is still admitted


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_worker_on_test_queue")
def test_the_periodic_task_restores_counters_through_the_worker(org, team, budget, clean_redis):
    now = datetime.now(UTC)
    spend(org, team, "1.111111", at=now)
    tasks.reconcile_budgets.delay()
    wait_until(lambda: counters(clean_redis, budget, now).get("spent") == 1_111_111, what="the restored counter")
    tasks.reconcile_budgets.delay()  # twice: still the ledger's figure
    time.sleep(1)
    assert counters(clean_redis, budget, now) == {"spent": 1_111_111}

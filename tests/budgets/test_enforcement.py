"""Hard budgets in the gateway: reserve-then-settle across workers, exact under concurrency."""

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import openai
import pytest

from budgets.services import create_budget, set_price
from fleet import services
from fleet.redis_client import redis_keys
from gateway.budgets import period_bounds
from gateway.config import DeploymentConfig
from keys.services import issue_key
from tests.plugins.budget_checks import HELLO_COST_MICROS, settled_counters
from tests.plugins.gateway_workers import burst

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}


def spent_micros(client, budget, now=None) -> int:
    label, _ = period_bounds(budget.period, now or datetime.now(UTC))
    return int(client.hget(redis_keys().budget(str(budget.org_id), str(budget.pk), label), "spent") or 0)


@pytest.fixture(params=["one server", "3-master cluster"])
def budget_redis(request, use_redis):
    """The suite's Redis, or (issue 13) a Redis Cluster of the test's own for the control plane
    and the workers."""
    if request.param == "3-master cluster":
        use_redis(request.getfixturevalue("redis_cluster").url)
    return request.param


def test_four_workers_200_concurrent_requests_never_overspend_a_team_budget(
    budget_redis, served, gateway_workers, actors, org, clean_redis, report
):
    team = served["team"]
    budget = create_budget(
        actor=actors["finance"],
        org=org,
        name="Platform daily",
        scope="team",
        team=team,
        amount=Decimal("0.01"),
        period="daily",
    )
    services.publish_pending()
    workers = gateway_workers(4)
    responses = asyncio.run(burst([w.url for w in workers], served["plaintext"], 200, BODY))
    statuses = [r.status_code for r in responses]
    admitted, refused = statuses.count(200), statuses.count(402)
    assert admitted + refused == 200, set(statuses)
    assert admitted > 0 and refused > 0
    for response in responses:
        if response.status_code == 402:
            error = response.json()["error"]
            assert error["code"] == "budget_exceeded"
            assert "Platform daily" in error["message"] and "$0.01" in error["message"]
    counters = settled_counters(clean_redis, budget)
    report(f"\n{budget_redis}: {admitted} of 200 admitted, {counters['spent']} of 10000 micro-dollars spent")
    assert counters["held"] == 0
    assert 0 < counters["spent"] <= 10_000  # $0.01 in micro-dollars
    assert counters["spent"] == admitted * HELLO_COST_MICROS


def test_a_request_that_would_cross_the_cap_is_refused_before_the_provider(
    served, gateway_workers, actors, org, provider_simulator, clean_redis
):
    create_budget(
        actor=actors["finance"],
        org=org,
        name="Tiny",
        scope="key",
        key=served["key"],
        amount=Decimal("0.01"),
        period="monthly",
    )
    services.publish_pending()
    (worker,) = gateway_workers(1)
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=served["plaintext"], max_retries=0)
    before = provider_simulator.stats().get("gpt-4o", 0)
    with pytest.raises(openai.APIStatusError) as error:
        # 100,000 output tokens at $10/M could cost $1: refused without calling the provider.
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=100_000)
    assert error.value.status_code == 402
    assert provider_simulator.stats().get("gpt-4o", 0) == before
    assert client.chat.completions.create(**BODY).choices  # a small request still fits


def test_absurd_max_tokens_and_n_are_refused_not_reserved(served, gateway_workers, actors, org, clean_redis):
    budget = create_budget(
        actor=actors["finance"], org=org, name="Org", scope="org", amount=Decimal("100"), period="total"
    )
    services.publish_pending()
    (worker,) = gateway_workers(1)
    headers = {"Authorization": f"Bearer {served['plaintext']}"}
    for bad in ({"max_tokens": 999_999_999}, {"n": 128}):
        response = httpx.post(f"{worker.url}/v1/chat/completions", json={**BODY, **bad}, headers=headers)
        assert response.status_code == 400
    counters = clean_redis.hgetall(redis_keys().budget(str(budget.org_id), str(budget.pk), "total"))
    assert int(counters.get(b"spent", 0)) == 0
    assert int(counters.get(b"held", 0)) == 0


def test_a_model_without_a_price_is_refused_under_a_hard_budget(
    org, team, actors, users, provider_simulator, clean_redis, fresh_key_ring, gateway_workers
):
    from tests.factories import make_routes

    routes = make_routes(org, actors["admin"], base_url=f"{provider_simulator.url}/v1", aliases=("free-model",))
    deployment = routes["free-model"].deployments.get()
    deployment.input_price_per_mtok = deployment.output_price_per_mtok = Decimal(0)
    deployment.save()
    _key, plaintext = issue_key(actor=actors["admin"], team=team, name="k")
    create_budget(
        actor=actors["finance"], org=org, name="Cap", scope="team", team=team, amount=Decimal(5), period="daily"
    )
    services.publish_pending()
    (worker,) = gateway_workers(1)
    response = httpx.post(
        f"{worker.url}/v1/chat/completions",
        json={**BODY, "model": "free-model"},
        headers={"Authorization": f"Bearer {plaintext}"},
    )
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "model_not_priced"


def test_period_boundaries_are_utc_calendar_periods():
    moment = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)  # a Sunday
    assert period_bounds("daily", moment) == ("d20260301", datetime(2026, 3, 2, tzinfo=UTC))
    assert period_bounds("weekly", moment) == ("w20260223", datetime(2026, 3, 2, tzinfo=UTC))
    assert period_bounds("monthly", moment) == ("m202603", datetime(2026, 4, 1, tzinfo=UTC))
    assert period_bounds("monthly", datetime(2026, 12, 31, tzinfo=UTC))[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_bounds("total", moment) == ("total", None)
    next_day = moment + timedelta(seconds=1)
    assert period_bounds("daily", next_day)[0] == "d20260302"  # a new counter: no reset job


def test_a_price_change_applies_from_its_date_and_never_reprices_the_past(org, actors, fresh_key_ring):
    from fleet.compile import deployment_value
    from tests.factories import make_routes

    deployment = make_routes(org, actors["admin"], aliases=("gpt-4o",))["gpt-4o"].deployments.get()
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    set_price(
        actor=actors["finance"],
        deployment=deployment,
        input_per_mtok="5",
        output_per_mtok="20",
        effective_from=tomorrow,
    )
    config = DeploymentConfig.parse(str(deployment.pk), deployment_value(deployment))
    now = time.time()
    assert config.cost_micros(1_000_000, 0, now) == 2_500_000  # still $2.50/M today
    assert config.cost_micros(1_000_000, 0, tomorrow.timestamp() + 1) == 5_000_000
    assert config.cost_micros(0, 1_000_000, tomorrow.timestamp() + 1) == 20_000_000


def test_a_client_that_disconnects_mid_stream_is_charged_for_what_was_produced(
    served, gateway_workers, actors, org, provider_simulator, clean_redis
):
    budget = create_budget(
        actor=actors["finance"],
        org=org,
        name="Stream",
        scope="key",
        key=served["key"],
        amount=Decimal("1"),
        period="daily",
    )
    services.publish_pending()
    provider_simulator.configure(models={"gpt-4o": {"tokens_per_second": 20, "completion_tokens": 40}})
    (worker,) = gateway_workers(1)
    headers = {"Authorization": f"Bearer {served['plaintext']}"}
    with httpx.stream(
        "POST",
        f"{worker.url}/v1/chat/completions",
        headers=headers,
        json={**BODY, "max_tokens": 40, "stream": True},
        timeout=10,
    ) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                seen += 1 if json.loads(line[5:])["choices"][0]["delta"].get("content") else 0
            if seen >= 4:
                break  # the client goes away after a few tokens
    label, _ = period_bounds("daily", datetime.now(UTC))
    counters_key = redis_keys().budget(str(budget.org_id), str(budget.pk), label)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and int(clean_redis.hget(counters_key, "held") or 1):
        time.sleep(0.05)
    spent = int(clean_redis.hget(counters_key, "spent") or 0)
    full_answer = (6 * 2_500_000 + 40 * 10_000_000) // 1_000_000
    assert int(clean_redis.hget(counters_key, "held")) == 0  # the reservation was settled, not left hanging
    assert 0 < spent < full_answer  # charged for the tokens produced before the disconnect, not all 40


def test_concurrent_requests_reusing_one_x_request_id_each_reserve_and_settle_on_their_own(
    served, gateway_workers, actors, org, clean_redis, provider_simulator
):
    budget = create_budget(
        actor=actors["finance"], org=org, name="Shared id", scope="org", amount=Decimal("100"), period="daily"
    )
    services.publish_pending()
    provider_simulator.configure(models={"gpt-4o": {"latency_ms": 300}})  # the ten overlap
    (worker,) = gateway_workers(1)

    async def same_id() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {served['plaintext']}", "X-Request-Id": "reused-by-the-caller"}
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{worker.url}/v1/chat/completions"
            return await asyncio.gather(*(client.post(url, json=BODY, headers=headers) for _ in range(10)))

    responses = asyncio.run(same_id())
    assert [r.status_code for r in responses] == [200] * 10
    label, _ = period_bounds("daily", datetime.now(UTC))
    counters = redis_keys().budget(str(budget.org_id), str(budget.pk), label)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and int(clean_redis.hget(counters, "held") or 0):
        time.sleep(0.05)
    assert int(clean_redis.hget(counters, "held")) == 0  # no reservation left behind
    # Every request is charged: $2.50 / $10 per million tokens, rounded up per request.
    expected = sum(
        -(
            -(r.json()["usage"]["prompt_tokens"] * 2_500_000 + r.json()["usage"]["completion_tokens"] * 10_000_000)
            // 1_000_000
        )
        for r in responses
    )
    assert spent_micros(clean_redis, budget) == expected

"""SLO figures against a hand-computed example: 20 ledger rows with chosen latencies, statuses
and upstream attempts, two policies, a fallback behind which a deployment fails."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from budgets.models import UsageRecord
from orgs.services import create_team
from sla import reports
from sla.models import SlaPolicy
from sla.services import create_deployment
from tests.conftest import SYSTEM
from tests.factories import make_routes

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
START, END = NOW - timedelta(days=30), NOW


def record(org, team, *, alias, latency, ttft, status=200, error_code="", deployment=None, attempts=(), at=None):
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        org=org,
        team_id=team.pk,
        key_id=uuid.uuid4(),
        alias=alias,
        deployment_id=deployment.pk if deployment else None,
        endpoint="chat",
        input_tokens=100,
        output_tokens=10,
        cost=Decimal("0.001000"),
        latency_ms=latency,
        ttft_ms=ttft,
        status=status,
        error_code=error_code,
        attempts=list(attempts),
        occurred_at=at or NOW - timedelta(hours=2),
    )


def attempt(deployment, status, latency, error_code=""):
    return {"deployment_id": str(deployment.pk), "status": status, "error_code": error_code, "latency_ms": latency}


@pytest.fixture
def example(org, team):
    """Platform (org default: 90%, p95 2000 ms, TTFT 500 ms), 10 gpt-4o requests of latency
    100..1000 ms and TTFT a tenth of it, the last two 5xx, one 400; rows from before attempts
    were recorded. Data (its own policy: 99%, 1000 ms, 200 ms), 10 claude-sonnet requests of
    latency 50..500 ms and TTFT 25..250 ms, all answered: the first four by the fallback after
    the primary failed with 503 in 1000 ms, the fifth a provider 429."""
    routes = make_routes(org, SYSTEM, aliases=("gpt-4o", "claude-sonnet"))
    gpt = routes["gpt-4o"].deployments.get()
    primary = routes["claude-sonnet"].deployments.get()
    fallback = create_deployment(
        actor=SYSTEM,
        org=org,
        name="claude fallback",
        credential=primary.credential,
        upstream_model="claude",
        input_price_per_mtok=Decimal(1),
        output_price_per_mtok=Decimal(1),
    )
    data = create_team(actor=SYSTEM, org=org, name="Data")
    default = SlaPolicy.objects.create(
        org=org, name="Default", slo_availability=Decimal(90), slo_p95_latency_ms=2000, slo_p95_ttft_ms=500
    )
    strict = SlaPolicy.objects.create(
        org=org, team=data, name="Strict", slo_availability=Decimal(99), slo_p95_latency_ms=1000, slo_p95_ttft_ms=200
    )
    for i in range(1, 11):
        status, code = {8: (400, "invalid_request"), 9: (500, ""), 10: (503, "provider_unavailable")}.get(i, (200, ""))
        record(
            org, team, alias="gpt-4o", latency=100.0 * i, ttft=10.0 * i, status=status, error_code=code, deployment=gpt
        )
    for i in range(1, 11):
        latency, ttft = 50.0 * i, 25.0 * i
        if i <= 4:
            tries = [attempt(primary, 503, 1000.0, "upstream_error"), attempt(fallback, 200, latency)]
            record(org, data, alias="claude-sonnet", latency=latency, ttft=ttft, deployment=fallback, attempts=tries)
        elif i == 5:
            tries = [attempt(primary, 429, latency, "rate_limit_exceeded")]
            record(
                org,
                data,
                alias="claude-sonnet",
                latency=latency,
                ttft=ttft,
                status=429,
                error_code="rate_limit_exceeded",
                deployment=primary,
                attempts=tries,
            )
        else:
            tries = [attempt(primary, 200, latency)]
            record(org, data, alias="claude-sonnet", latency=latency, ttft=ttft, deployment=primary, attempts=tries)
    # Outside the window: never counted.
    record(
        org,
        team,
        alias="gpt-4o",
        latency=9999.0,
        ttft=9999.0,
        status=500,
        deployment=gpt,
        at=START - timedelta(seconds=1),
    )
    record(org, team, alias="gpt-4o", latency=9999.0, ttft=9999.0, status=500, deployment=gpt, at=END)
    return {"gpt": gpt, "primary": primary, "fallback": fallback, "default": default, "strict": strict}


def percentiles(figures) -> tuple:
    return tuple(
        pytest.approx(value) for value in (figures.latency["p50"], figures.latency["p95"], figures.latency["p99"])
    )


def codes(figures) -> list[tuple]:
    return [(error.code, error.count, error.rate) for error in figures.errors]


def test_by_policy_matches_the_hand_computed_example(org, example):
    rows = {row.key: row for row in reports.by_policy(org, START, END)}
    default, strict = rows[str(example["default"].pk)], rows[str(example["strict"].pk)]
    assert set(rows) == {str(example["default"].pk), str(example["strict"].pk)}

    assert (default.requests, default.failed) == (10, 2)
    assert default.availability == Decimal("0.8")
    # percentile_cont over 100..1000: p50 at rank 4.5 -> 550, p95 at 8.55 -> 955, p99 at 8.91 -> 991.
    assert default.latency == {"p50": pytest.approx(550), "p95": pytest.approx(955), "p99": pytest.approx(991)}
    assert default.ttft == {"p50": pytest.approx(55), "p95": pytest.approx(95.5), "p99": pytest.approx(99.1)}
    # 20% failed where 10% is allowed: burn rate 2, the budget overspent by its whole size.
    assert default.burn_rate == Decimal(2)
    assert default.budget_remaining == Decimal(-1)
    assert default.breaches == ["availability"]
    assert codes(default) == [
        ("http_500", 1, Decimal("0.1")),
        ("invalid_request", 1, Decimal("0.1")),
        ("provider_unavailable", 1, Decimal("0.1")),
    ]

    assert (strict.requests, strict.failed, strict.availability) == (10, 0, Decimal(1))
    assert strict.latency == {"p50": pytest.approx(275), "p95": pytest.approx(477.5), "p99": pytest.approx(495.5)}
    # TTFT 25..250: p95 at rank 8.55 -> 225 + 0.55 * 25 = 238.75, above the 200 ms target.
    assert strict.ttft["p95"] == pytest.approx(238.75)
    assert (strict.burn_rate, strict.budget_remaining) == (Decimal(0), Decimal(1))
    assert strict.breaches == ["p95_ttft_ms"]
    assert [(o.name, o.met) for o in strict.objectives] == [
        ("availability", True),
        ("p95_latency_ms", True),
        ("p95_ttft_ms", False),
    ]
    assert codes(strict) == [("rate_limit_exceeded", 1, Decimal("0.1"))]


def test_requests_of_teams_without_a_policy_fall_to_no_policy_without_a_default(org, example):
    example["default"].delete()
    rows = {row.key: row for row in reports.by_policy(org, START, END)}
    assert rows[reports.NO_POLICY].label == "No policy"
    assert (rows[reports.NO_POLICY].requests, rows[reports.NO_POLICY].burn_rate) == (10, None)
    assert rows[reports.NO_POLICY].objectives == []
    assert rows[str(example["strict"].pk)].requests == 10


def test_by_route_is_held_to_the_chosen_policy(org, example):
    rows = {row.key: row for row in reports.by_route(org, START, END)}
    assert {key: (row.requests, row.failed) for key, row in rows.items()} == {
        "gpt-4o": (10, 2),
        "claude-sonnet": (10, 0),
    }
    assert rows["claude-sonnet"].targets == example["default"]
    strict_only = reports.by_route(org, START, END, str(example["strict"].pk))
    assert [(row.key, row.requests) for row in strict_only] == [("claude-sonnet", 10)]
    assert strict_only[0].targets == example["strict"]
    assert strict_only[0].breaches == ["p95_ttft_ms"]


def test_a_deployment_failing_behind_a_fallback_shows_its_own_failures(org, example):
    rows = {row.key: row for row in reports.by_deployment(org, START, END)}
    primary, fallback, gpt = (rows[str(example[name].pk)] for name in ("primary", "fallback", "gpt"))

    # Four 503s behind the fallback, one 429, five answers: 40% of its attempts failed.
    assert (primary.requests, primary.failed, primary.availability) == (10, 4, Decimal("0.6"))
    # Attempt latencies 250, 300, 350, 400, 450, 500 and four of 1000.
    assert percentiles(primary) == (pytest.approx(475), pytest.approx(1000), pytest.approx(1000))
    # TTFT counts where it answered (the 429 included): 125..250 by 25 -> p50 187.5.
    assert primary.ttft["p50"] == pytest.approx(187.5)
    assert codes(primary) == [("upstream_error", 4, Decimal("0.4")), ("rate_limit_exceeded", 1, Decimal("0.1"))]
    assert primary.label == example["primary"].name

    assert (fallback.requests, fallback.failed) == (4, 0)
    assert fallback.latency["p50"] == pytest.approx(125)
    assert fallback.ttft["p50"] == pytest.approx(62.5)

    # Rows without attempts count as one attempt by the deployment that answered.
    assert (gpt.requests, gpt.failed) == (10, 2)
    assert gpt.ttft["p50"] == pytest.approx(45)  # answered: TTFT 10..80
    assert {error.code for error in gpt.errors} == {"http_500", "invalid_request", "provider_unavailable"}


def test_the_leaderboard(org, example):
    rows = reports.leaderboard(org, START, END)
    assert [(row.key, row.requests, row.input_tokens, row.output_tokens, row.cost) for row in rows] == [
        ("claude-sonnet", 10, 1000, 100, Decimal("0.010000")),
        ("gpt-4o", 10, 1000, 100, Decimal("0.010000")),
    ]
    gpt = rows[1]
    assert (gpt.latency["p50"], gpt.latency["p95"]) == (pytest.approx(550), pytest.approx(955))
    assert gpt.error_rate == Decimal("0.2")


def test_burn_rates_per_window(org, example):
    counts = reports.policy_burn_rates(org, NOW, {"1h": timedelta(hours=1), "6h": timedelta(hours=6)})
    assert counts[example["default"].pk] == {"1h": (0, 0), "6h": (2, 10)}
    assert counts[example["strict"].pk] == {"1h": (0, 0), "6h": (0, 10)}


def test_series_per_day(org, example):
    buckets = reports.series(reports.ledger(org, START, END), START, END, "day")
    assert len(buckets) == 31  # a partial first day, 29 whole, and today
    today = buckets[-2] if buckets[-1].requests == 0 else buckets[-1]
    assert (today.requests, today.failed) == (20, 2)
    assert today.availability_percent == Decimal(90)
    assert sum(bucket.requests for bucket in buckets) == 20

"""Budgets, prices and spend over the API: /api/v1/orgs/<org_slug>/{budgets,prices,spend}/, a
team's cost center and the budget fail-open setting."""

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from budgets.models import Budget, Price, UsageRecord
from budgets.services import create_budget, set_price
from budgets.spend import budget_spend, period_range
from keys.services import issue_key
from orgs.models import Organization, Team
from orgs.services import create_api_token, create_team
from tests.conftest import SYSTEM
from tests.factories import make_routes

UNKNOWN = "6f1c1f4e-0000-4000-8000-000000000000"


def url(name: str, *args) -> str:
    return reverse(f"api:budgets:{name}", args=args)


def post(client: Client, path: str, data=None):
    return client.post(path, data if data is not None else {}, content_type="application/json")


def patch(client: Client, path: str, data):
    return client.patch(path, data, content_type="application/json")


def put(client: Client, path: str, data):
    return client.put(path, data, content_type="application/json")


def assert_event(org, action: str, actor_id: str) -> AuditEvent:
    event = AuditEvent.objects.filter(org=org).order_by("-sequence").first()
    assert (event.action, event.actor_id) == (action, actor_id)
    return event


def assert_field_errors(response, field: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field], body
    assert body[field] and all(isinstance(message, str) for message in body[field])


@pytest.fixture
def routes(org, actors, fresh_key_ring):
    return make_routes(org, actors["admin"])


@pytest.fixture
def deployment(routes):
    return routes["gpt-4o"].deployments.get()


@pytest.fixture
def key(team):
    key, _plaintext = issue_key(actor=SYSTEM, team=team, name="laptop")
    return key


@pytest.fixture
def other_team(other_org):
    return other_org.teams.get()


@pytest.fixture
def other_key(other_team):
    key, _plaintext = issue_key(actor=SYSTEM, team=other_team, name="theirs")
    return key


@pytest.fixture
def other_deployment(other_org, fresh_key_ring):
    return make_routes(other_org, SYSTEM, aliases=("gpt-4o",))["gpt-4o"].deployments.get()


def budget_body(**fields) -> dict:
    return {"name": "Platform monthly", "scope": "org", "amount": "500.00", "period": "monthly", **fields}


def make_budget(org, name: str = "Org monthly", **fields) -> Budget:
    values = {"scope": "org", "amount": "100", "period": "monthly", **fields}
    return create_budget(actor=SYSTEM, org=org, name=name, **values)


def record(org, team, key, cost: str, occurred_at: datetime, alias: str = "gpt-4o", deployment=None) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        org=org,
        team_id=team.pk,
        key_id=key.pk,
        alias=alias,
        deployment_id=deployment.pk if deployment else None,
        endpoint="chat.completions",
        input_tokens=100,
        output_tokens=20,
        cost=Decimal(cost),
        latency_ms=10.0,
        ttft_ms=2.0,
        status=200,
        occurred_at=occurred_at,
    )


# Budgets -----------------------------------------------------------------------------------


def test_finance_sets_a_team_budget(client_for, org, users, team):
    body = budget_body(
        scope="team",
        team=str(team.pk),
        amount="1250.50",
        hard=False,
        thresholds=[25, 90],
        emails=["Finance@Acme.test"],
        webhooks=["http://127.0.0.1:9/hooks/budget"],
    )
    response = post(client_for("finance"), url("budget-list", "acme"), body)
    assert response.status_code == 201, response.json()
    data = response.json()
    budget = Budget.objects.get(pk=data["id"], org=org)
    _start, end = period_range("monthly", datetime.now(UTC))
    assert data == {
        "id": str(budget.pk),
        "name": "Platform monthly",
        "scope": "team",
        "team": {"id": str(team.pk), "name": "Platform"},
        "key": None,
        "amount": "1250.50",
        "period": "monthly",
        "hard": False,
        "thresholds": [25, 90],
        "emails": ["finance@acme.test"],
        "webhooks": ["http://127.0.0.1:9/hooks/budget"],
        "created_at": data["created_at"],
        "spend": "0.000000",
        "percent_used": "0.00",
        "period_start": data["period_start"],
        "period_end": end.isoformat().replace("+00:00", "Z"),
    }
    assert (budget.team, budget.amount, budget.thresholds) == (team, Decimal("1250.50"), [25, 90])
    event = assert_event(org, "budget.created", str(users["finance"].uuid))
    assert event.diff["amount"] == {"before": None, "after": "1250.50"}


def test_budget_defaults_and_key_scope(client_for, org, key):
    response = post(client_for("admin"), url("budget-list", "acme"), budget_body(scope="key", key=str(key.pk)))
    assert response.status_code == 201, response.json()
    data = response.json()
    assert (data["hard"], data["thresholds"], data["emails"], data["webhooks"]) == (True, [50, 80, 100], [], [])
    assert data["key"] == {"id": str(key.pk), "name": "laptop", "prefix": key.prefix}
    total = post(client_for("admin"), url("budget-list", "acme"), budget_body(period="total")).json()
    assert (total["scope"], total["period_start"], total["period_end"]) == ("org", None, None)


def test_another_orgs_team_or_key_is_not_found(client_for, org, team, other_team, other_key):
    client = client_for("finance")
    for body in (
        budget_body(scope="team", team=str(other_team.pk)),
        budget_body(scope="team", team=UNKNOWN),
        budget_body(scope="key", key=str(other_key.pk)),
        budget_body(scope="key", key=UNKNOWN),
    ):
        response = post(client, url("budget-list", "acme"), body)
        assert (response.status_code, response.json()) == (404, {"detail": "Not found."})
    assert not Budget.objects.exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"amount": "-5"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "0.00"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount": "-Infinity"}, "amount"),
        ({"amount": "1e30"}, "amount"),
        ({"amount": "100000000.01"}, "amount"),
        ({"amount": "10.001"}, "amount"),
        ({"amount": 500}, "amount"),
        ({"amount": "five"}, "amount"),
        ({"amount": ""}, "amount"),
        ({"amount": None}, "amount"),
        ({"thresholds": [0, 50]}, "thresholds"),
        ({"thresholds": [50, 101]}, "thresholds"),
        ({"thresholds": [-10]}, "thresholds"),
        ({"thresholds": [80, 50]}, "thresholds"),
        ({"thresholds": [50, 50]}, "thresholds"),
        ({"thresholds": []}, "thresholds"),
        ({"thresholds": ["50"]}, "thresholds"),
        ({"thresholds": [50.5]}, "thresholds"),
        ({"thresholds": 50}, "thresholds"),
        ({"thresholds": list(range(1, 13))}, "thresholds"),
        ({"period": "yearly"}, "period"),
        ({"period": None}, "period"),
        ({"scope": "galaxy"}, "scope"),
        ({"scope": "team"}, "team"),
        ({"scope": "key"}, "key"),
        ({"team": UNKNOWN}, "team"),
        ({"team": 5}, "team"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"emails": ["not-an-email"]}, "emails"),
        ({"emails": "finance@acme.test"}, "emails"),
        ({"webhooks": ["ftp://127.0.0.1/hook"]}, "webhooks"),
        ({"webhooks": ["http://169.254.169.254/latest"]}, "webhooks"),
        ({"webhooks": ["http://127.0.0.1:9/h"] * 21}, "webhooks"),
    ],
)
def test_create_budget_rejects_bad_input(client_for, org, extra, field):
    response = post(client_for("finance"), url("budget-list", "acme"), budget_body(**extra))
    assert_field_errors(response, field)
    assert not Budget.objects.exists()


def test_budget_list_shows_spend_this_period(client_for, org, team, key):
    now = datetime.now(UTC)
    start, _end = period_range("daily", now)
    team_budget = make_budget(org, "Team daily", scope="team", team=team, period="daily", amount="10")
    org_budget = make_budget(org, "Org total", period="total", amount="1000")
    make_budget(org, "Key weekly", scope="key", key=key, period="weekly")
    other_team = create_team(actor=SYSTEM, org=org, name="Data")
    other_key, _plaintext = issue_key(actor=SYSTEM, team=other_team, name="data key")
    record(org, team, key, "2.500000", start + timedelta(seconds=1))
    record(org, team, key, "0.000001", now)
    record(org, team, key, "7.000000", start - timedelta(seconds=1))  # yesterday: not this day
    record(org, other_team, other_key, "3.333333", now)

    body = client_for("auditor").get(url("budget-list", "acme")).json()
    rows = {row["name"]: row for row in body["results"]}
    assert [row["name"] for row in body["results"]] == ["Key weekly", "Org total", "Team daily"]
    assert (rows["Team daily"]["spend"], rows["Team daily"]["percent_used"]) == ("2.500001", "25.00")
    assert rows["Org total"]["spend"] == "12.833334"
    for budget in Budget.objects.filter(org=org):
        assert Decimal(rows[budget.name]["spend"]) == budget_spend(budget)
    detail = client_for("finance").get(url("budget-detail", "acme", team_budget.pk)).json()
    assert detail["spend"] == "2.500001"
    assert detail["period_end"] == (start + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    filtered = client_for("finance").get(url("budget-list", "acme"), {"scope": "team"}).json()["results"]
    assert [row["id"] for row in filtered] == [str(team_budget.pk)]
    assert str(org_budget.pk) not in {row["id"] for row in filtered}


def test_budget_list_query_count_is_constant(client_for, org, team, key):
    client = client_for("finance")
    record(org, team, key, "1.000000", datetime.now(UTC))

    def add(count: int, offset: int) -> None:
        for i in range(offset, offset + count):
            scope = ("org", "team", "key")[i % 3]
            target = {"team": {"team": team}, "key": {"key": key}, "org": {}}[scope]
            period = ("daily", "weekly", "monthly", "total")[i % 4]
            make_budget(org, f"budget {i:02}", scope=scope, period=period, **target)

    def count_queries(expected_rows: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url("budget-list", "acme"), {"limit": 200})
        assert len(response.json()["results"]) == expected_rows
        return len(queries)

    add(3, 0)
    few = count_queries(3)
    add(27, 3)
    assert count_queries(30) == few


def test_update_budget(client_for, org, users, team):
    budget = make_budget(org, "Team monthly", scope="team", team=team)
    client = client_for("finance")
    response = patch(client, url("budget-detail", "acme", budget.pk), {"amount": "250.25", "thresholds": [90]})
    assert response.status_code == 200, response.json()
    data = response.json()
    assert (data["name"], data["amount"], data["thresholds"], data["scope"]) == (
        "Team monthly",
        "250.25",
        [90],
        "team",
    )
    event = assert_event(org, "budget.updated", str(users["finance"].uuid))
    assert event.diff["amount"] == {"before": "100.00", "after": "250.25"}
    for change, field in (({"period": "daily"}, "period"), ({"amount": "0"}, "amount"), ({"hard": "maybe"}, "hard")):
        assert_field_errors(patch(client, url("budget-detail", "acme", budget.pk), change), field)
    budget.refresh_from_db()
    assert (budget.amount, budget.period) == (Decimal("250.25"), "monthly")


def test_delete_budget(client_for, org, users, other_org):
    budget = make_budget(org)
    theirs = make_budget(other_org, "Theirs")
    client = client_for("finance")
    assert client.delete(url("budget-detail", "acme", theirs.pk)).status_code == 404
    assert client.get(url("budget-detail", "acme", theirs.pk)).status_code == 404
    assert client.delete(url("budget-detail", "acme", budget.pk)).status_code == 204
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert Budget.objects.filter(pk=theirs.pk).exists()
    assert_event(org, "budget.deleted", str(users["finance"].uuid))


def test_developer_may_not_set_budgets(client_for, org):
    assert post(client_for("developer"), url("budget-list", "acme"), budget_body()).status_code == 403
    assert client_for("developer").get(url("budget-list", "acme")).status_code == 403
    assert not Budget.objects.exists()


def test_tokens_with_finance_role_manage_budgets(org):
    _token, plaintext = create_api_token(actor=SYSTEM, org=org, name="finance automation", role="finance")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert post(client, url("budget-list", "acme"), budget_body()).status_code == 201


# Prices ------------------------------------------------------------------------------------


def test_set_a_price_and_read_the_catalog(client_for, org, users, deployment):
    client = client_for("finance")
    body = {
        "deployment": str(deployment.pk),
        "input_per_mtok": "2.50",
        "output_per_mtok": "10.00",
        "cached_input_per_mtok": "1.25",
        "effective_from": "2030-01-01T00:00:00+02:00",
    }
    response = post(client, url("price-list", "acme"), body)
    assert response.status_code == 201, response.json()
    data = response.json()
    price = Price.objects.get(pk=data["id"], org=org)
    assert data == {
        "id": str(price.pk),
        "deployment": {"id": str(deployment.pk), "name": "gpt-4o deployment", "upstream_model": "gpt-4o"},
        "input_per_mtok": "2.500000",
        "output_per_mtok": "10.000000",
        "cached_input_per_mtok": "1.250000",
        "effective_from": "2029-12-31T22:00:00Z",
        "created_at": data["created_at"],
    }
    assert_event(org, "price.set", str(users["finance"].uuid))
    later = post(client, url("price-list", "acme"), {**body, "effective_from": "2031-01-01T00:00:00Z"}).json()
    now = post(client, url("price-list", "acme"), {**body, "effective_from": None} | {"input_per_mtok": "3"})
    assert now.status_code == 400  # null is not "now": omit the field for that
    current = post(client, url("price-list", "acme"), {k: v for k, v in body.items() if k != "effective_from"})
    assert current.status_code == 201, current.json()
    catalog = client_for("auditor").get(url("price-list", "acme")).json()["results"]
    assert [row["id"] for row in catalog][:3] == [later["id"], str(price.pk), current.json()["id"]]
    only = client.get(url("price-list", "acme"), {"deployment": UNKNOWN}).json()["results"]
    assert only == []


def test_price_for_another_orgs_deployment_is_not_found(client_for, org, deployment, other_deployment):
    body = {"deployment": str(other_deployment.pk), "input_per_mtok": "1", "output_per_mtok": "1"}
    assert post(client_for("finance"), url("price-list", "acme"), body).status_code == 404
    assert post(client_for("finance"), url("price-list", "acme"), {**body, "deployment": UNKNOWN}).status_code == 404
    assert not Price.objects.filter(deployment=other_deployment, org__slug="acme").exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"input_per_mtok": "-1"}, "input_per_mtok"),
        ({"input_per_mtok": "NaN"}, "input_per_mtok"),
        ({"input_per_mtok": "Infinity"}, "input_per_mtok"),
        ({"input_per_mtok": "1e30"}, "input_per_mtok"),
        ({"input_per_mtok": "10000.000001"}, "input_per_mtok"),
        ({"input_per_mtok": 2.5}, "input_per_mtok"),
        ({"output_per_mtok": "1.0000001"}, "output_per_mtok"),
        ({"cached_input_per_mtok": "-0.01"}, "cached_input_per_mtok"),
        ({"effective_from": "2030-01-01T00:00:00"}, "effective_from"),
        ({"effective_from": "2030-01-01"}, "effective_from"),
        ({"effective_from": "tomorrow"}, "effective_from"),
        ({"effective_from": "9999-12-31T23:59:59-14:00"}, "effective_from"),
        ({"deployment": "nope"}, "deployment"),
    ],
)
def test_set_price_rejects_bad_input(client_for, org, deployment, extra, field):
    before = Price.objects.count()
    body = {"deployment": str(deployment.pk), "input_per_mtok": "1", "output_per_mtok": "2", **extra}
    assert_field_errors(post(client_for("finance"), url("price-list", "acme"), body), field)
    assert Price.objects.count() == before


def test_two_prices_cannot_start_at_the_same_moment(client_for, org, deployment):
    body = {
        "deployment": str(deployment.pk),
        "input_per_mtok": "1",
        "output_per_mtok": "2",
        "effective_from": "2030-01-01T00:00:00Z",
    }
    assert post(client_for("finance"), url("price-list", "acme"), body).status_code == 201
    assert_field_errors(post(client_for("finance"), url("price-list", "acme"), body), "effective_from")


def test_price_list_query_count_is_constant(client_for, org, routes):
    client = client_for("finance")
    deployments = [route.deployments.get() for route in routes.values()]
    start = datetime(2030, 1, 1, tzinfo=UTC)

    def add(count: int, offset: int) -> None:
        for i in range(offset, offset + count):
            set_price(
                actor=SYSTEM,
                deployment=deployments[i % 3],
                input_per_mtok="1",
                output_per_mtok="2",
                effective_from=start + timedelta(days=i),
            )

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url("price-list", "acme"), {"limit": 200})
        assert response.status_code == 200
        return len(queries)

    add(3, 0)
    few = count_queries()
    add(27, 3)
    assert count_queries() == few


# Spend -------------------------------------------------------------------------------------


@pytest.fixture
def ledger(org, team, key, deployment, other_org, other_team, other_key):
    """Known costs over three July days, one row outside on each side, and another org's spend."""
    data_team = create_team(actor=SYSTEM, org=org, name='=HYPERLINK("http://evil")')
    data_key, _plaintext = issue_key(actor=SYSTEM, team=data_team, name="+data key")
    day = datetime(2025, 7, 1, tzinfo=UTC)
    rows = [
        record(org, team, key, "1.234567", day, deployment=deployment),
        record(org, team, key, "0.000001", day + timedelta(hours=23, minutes=59, seconds=59), alias="claude-sonnet"),
        record(org, data_team, data_key, "10.100000", day + timedelta(days=1), deployment=deployment),
        record(org, team, key, "0.333333", day + timedelta(days=2, hours=5), alias="o1", deployment=deployment),
        record(org, data_team, data_key, "0.333333", day + timedelta(days=2, hours=6), alias="o1"),
    ]
    record(org, team, key, "99.000000", day - timedelta(microseconds=1))  # June 30th
    record(org, team, key, "77.000000", datetime(2025, 8, 1, tzinfo=UTC))  # the exclusive end
    record(other_org, other_team, other_key, "55.000000", day + timedelta(hours=1))
    return {"rows": rows, "team": team, "key": key, "data_team": data_team, "data_key": data_key}


JULY = {"start": "2025-07-01", "end": "2025-08-01"}


def july_total(org) -> Decimal:
    window = {"occurred_at__gte": datetime(2025, 7, 1, tzinfo=UTC), "occurred_at__lt": datetime(2025, 8, 1, tzinfo=UTC)}
    return UsageRecord.objects.filter(org=org, **window).aggregate(total=Sum("cost"))["total"]


@pytest.mark.parametrize("group_by", ["team", "key", "model", "deployment", "day"])
def test_spend_totals_equal_the_ledger_to_the_cent(client_for, org, ledger, group_by):
    response = client_for("finance").get(url("spend", "acme"), {**JULY, "group_by": group_by})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["group_by"], body["start"], body["end"]) == (group_by, "2025-07-01", "2025-08-01")
    assert body["total"] == {"requests": 5, "input_tokens": 500, "output_tokens": 100, "cost": "12.001234"}
    assert Decimal(body["total"]["cost"]) == july_total(org) == Decimal("12.001234")
    assert sum(Decimal(row["cost"]) for row in body["rows"]) == july_total(org)
    assert all(len(row["cost"].split(".")[1]) == 6 for row in body["rows"])


def test_spend_groups_carry_ids_and_names(client_for, org, ledger, deployment):
    client = client_for("auditor")

    def rows(group_by: str) -> list[tuple]:
        body = client.get(url("spend", "acme"), {**JULY, "group_by": group_by}).json()
        return [(row["group"], row["name"], row["requests"], row["cost"]) for row in body["rows"]]

    team, data_team = ledger["team"], ledger["data_team"]
    assert rows("team") == [
        (str(data_team.pk), data_team.name, 2, "10.433333"),
        (str(team.pk), "Platform", 3, "1.567901"),
    ]
    assert rows("day") == [
        ("2025-07-01", "2025-07-01", 2, "1.234568"),
        ("2025-07-02", "2025-07-02", 1, "10.100000"),
        ("2025-07-03", "2025-07-03", 2, "0.666666"),
    ]
    assert rows("model") == [
        ("gpt-4o", "gpt-4o", 2, "11.334567"),
        ("o1", "o1", 2, "0.666666"),
        ("claude-sonnet", "claude-sonnet", 1, "0.000001"),
    ]
    assert rows("deployment") == [
        (str(deployment.pk), "gpt-4o deployment", 3, "11.667900"),
        (None, None, 2, "0.333334"),
    ]
    assert rows("key")[0] == (str(ledger["data_key"].pk), "+data key", 2, "10.433333")


def test_spend_defaults_to_this_month_by_day(client_for, org, team, key):
    now = datetime.now(UTC)
    record(org, team, key, "4.200000", now)
    body = client_for("finance").get(url("spend", "acme")).json()
    first = now.date().replace(day=1)
    assert (body["group_by"], body["start"]) == ("day", first.isoformat())
    assert body["end"] == (first + timedelta(days=32)).replace(day=1).isoformat()
    assert body["rows"] == [
        {
            "group": now.date().isoformat(),
            "name": now.date().isoformat(),
            "requests": 1,
            "input_tokens": 100,
            "output_tokens": 20,
            "cost": "4.200000",
        }
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"start": "2025-07-02", "end": "2025-07-01"}, "end"),
        ({"start": "2025-07-01", "end": "2025-07-01"}, "end"),
        ({"start": "2024-01-01", "end": "2025-01-03"}, "end"),
        ({"start": "2025-13-01"}, "start"),
        ({"start": "01/07/2025"}, "start"),
        ({"start": "2025-07-01T00:00:00Z"}, "start"),
        ({"end": "9999-12-31"}, "end"),
        ({"start": "1999-12-31"}, "start"),
        ({"group_by": "provider"}, "group_by"),
        ({"format": "xml"}, "format"),
    ],
)
def test_spend_rejects_bad_queries(client_for, org, query, field):
    assert_field_errors(client_for("finance").get(url("spend", "acme"), query), field)


def test_a_full_leap_year_is_one_report(client_for, org):
    response = client_for("finance").get(url("spend", "acme"), {"start": "2024-01-01", "end": "2025-01-01"})
    assert response.status_code == 200, response.json()
    for edge in ({"start": "9998-12-31"}, {"end": "2000-01-01"}, {"end": "9998-12-31"}):
        assert client_for("finance").get(url("spend", "acme"), edge).status_code in {200, 400}


def test_spend_csv_matches_the_json_and_defuses_formulas(client_for, org, ledger):
    client = client_for("finance")
    response = client.get(url("spend", "acme"), {**JULY, "group_by": "team", "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="spend-acme-team-2025-07-01-2025-08-01.csv"'
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    data_team, team = ledger["data_team"], ledger["team"]
    assert lines == [
        ["team", "name", "requests", "input_tokens", "output_tokens", "cost_usd"],
        [str(data_team.pk), "'" + data_team.name, "2", "200", "40", "10.433333"],
        [str(team.pk), "Platform", "3", "300", "60", "1.567901"],
    ]
    assert sum(Decimal(line[-1]) for line in lines[1:]) == july_total(org)
    keys = client.get(url("spend", "acme"), {**JULY, "group_by": "key", "format": "csv"})
    names = {line[1] for line in csv.reader(io.StringIO(b"".join(keys.streaming_content).decode()))}
    assert "'+data key" in names


def test_csv_needs_the_export_capability(client_for, org, ledger):
    auditor = client_for("auditor")
    assert auditor.get(url("spend", "acme"), JULY).status_code == 200
    refused = auditor.get(url("spend", "acme"), {**JULY, "format": "csv"})
    assert refused.status_code == 403
    assert refused["Content-Type"] == "application/json"
    assert client_for("viewer").get(url("spend", "acme"), {"format": "csv"}).status_code == 403
    assert client_for("admin").get(url("spend", "acme"), {**JULY, "format": "csv"}).status_code == 200


def test_bad_csv_query_answers_json(client_for, org):
    response = client_for("finance").get(url("spend", "acme"), {"format": "csv", "start": "bad"})
    assert response.status_code == 400
    assert list(response.json()) == ["start"]


def test_spend_query_count_does_not_grow_with_rows(client_for, org, ledger):
    client = client_for("finance")

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            client.get(url("spend", "acme"), {**JULY, "group_by": "key"})
        return len(queries)

    few = count_queries()
    for i in range(10):
        key, _plaintext = issue_key(actor=SYSTEM, team=ledger["team"], name=f"k{i}")
        record(org, ledger["team"], key, "1.000000", datetime(2025, 7, 10, tzinfo=UTC))
    assert count_queries() == few


# Cost centers and fail-open ----------------------------------------------------------------


def test_set_a_team_cost_center(client_for, org, users, team, other_team):
    client = client_for("finance")
    response = put(client, url("team-cost-center", "acme", team.pk), {"cost_center": " CC-1042 "})
    assert response.status_code == 200, response.json()
    assert response.json() == {"id": str(team.pk), "name": "Platform", "cost_center": "CC-1042"}
    assert Team.objects.get(pk=team.pk).cost_center == "CC-1042"
    assert_event(org, "team.cost_center_changed", str(users["finance"].uuid))
    assert put(client, url("team-cost-center", "acme", other_team.pk), {"cost_center": "X"}).status_code == 404
    for bad in ({"cost_center": "x" * 65}, {"cost_center": 42}, {"cost_center": None}, {}):
        assert_field_errors(put(client, url("team-cost-center", "acme", team.pk), bad), "cost_center")
    assert put(client, url("team-cost-center", "acme", team.pk), {"cost_center": ""}).json()["cost_center"] == ""


def test_budget_fail_open_is_an_admin_setting(client_for, org, users):
    path = url("budget-fail-open", "acme")
    assert put(client_for("finance"), path, {"fail_open": True}).status_code == 403
    response = put(client_for("admin"), path, {"fail_open": True})
    assert (response.status_code, response.json()) == (200, {"fail_open": True})
    assert Organization.objects.get(pk=org.pk).budget_fail_open is True
    assert_event(org, "org.budget_fail_open_changed", str(users["admin"].uuid))
    assert_field_errors(put(client_for("admin"), path, {"fail_open": "sometimes"}), "fail_open")
    assert put(client_for("admin"), path, {"fail_open": False}).json() == {"fail_open": False}

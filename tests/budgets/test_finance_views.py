"""The budget, price, finance and chargeback pages: each renders for the roles that may read it;
writes go through the services and leave audit events; bad input is a field error with 400,
never a 500; money equals hand-computed sums of ledger rows to the cent; the CSV neutralises
spreadsheet formulas; list pages cost the same queries for 3 rows as for 30."""

import csv
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from budgets.charts import budget_meter, meter_level
from budgets.models import AlertDelivery, Budget, BudgetAlert, Price, UsageRecord
from budgets.services import create_budget, set_cost_center, set_price
from budgets.spend import budget_spend
from budgets.views import budget_spends, csv_cell, linear_forecast, month_bounds
from keys.services import issue_key, revoke_key
from orgs.models import Team
from orgs.services import create_team
from sla.services import create_deployment
from tests.budgets.test_views import stats, table_rows
from tests.conftest import SYSTEM
from tests.factories import make_routes
from tests.orgs.test_views import assert_every_control_labelled, field_error, text

pytestmark = pytest.mark.django_db


def url(name: str, **kwargs) -> str:
    return reverse(f"budgets:{name}", kwargs={"org_slug": "acme", **kwargs})


BUDGETS, PRICES, FINANCE, CHARGEBACK = url("budget_list"), url("price_list"), url("finance"), url("chargeback")


def month_start() -> datetime:
    return month_bounds(timezone.now().astimezone(UTC).date())[0]


def spend(org, *, team, key, cost: str, at: datetime | None = None, alias="gpt-4o", deployment=None, tokens=(10, 5)):
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        org=org,
        team_id=team.pk,
        key_id=key.pk,
        alias=alias,
        deployment_id=deployment.pk if deployment else None,
        endpoint="chat",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost=Decimal(cost),
        latency_ms=100.0,
        ttft_ms=50.0,
        status=200,
        occurred_at=at or month_start() + timedelta(minutes=1),
    )


@pytest.fixture
def data_team(org, users):
    return create_team(actor=SYSTEM, org=org, name="Data")


@pytest.fixture
def keys(team, data_team):
    platform, _ = issue_key(actor=SYSTEM, team=team, name="platform ci")
    data, _ = issue_key(actor=SYSTEM, team=data_team, name="notebooks")
    return {"platform": platform, "data": data}


def audit_actions(org) -> list[str]:
    return list(AuditEvent.objects.filter(org=org).order_by("sequence").values_list("action", flat=True))


def count_queries(client, path: str, query: dict | None = None) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path, query or {}).status_code == 200
    return len(queries)


# Budgets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "finance", "auditor"])
def test_the_budget_list_renders_for_roles_that_read_budgets(org, team, keys, client_for, role):
    create_budget(
        actor=SYSTEM, org=org, name="Platform monthly", scope="team", team=team, amount="100", period="monthly"
    )
    response = client_for(role).get(BUDGETS)
    assert response.status_code == 200
    assert "Platform monthly" in text(response) and 'role="meter"' in text(response)
    assert ("Create a budget" in text(response)) == (role in {"owner", "admin", "finance"})
    assert_every_control_labelled(response)


def test_the_key_choice_lists_active_keys_by_name_and_prefix(org, keys, client_for):
    revoke_key(actor=SYSTEM, key=keys["data"])
    page = text(client_for("finance").get(BUDGETS))
    assert f"platform ci ({keys['platform'].prefix}…) · Platform" in page
    assert "notebooks" not in page


def test_finance_creates_a_team_budget_with_its_audit_event(org, team, client_for):
    response = client_for("finance").post(
        BUDGETS,
        {
            "name": "Platform cap",
            "scope": "team",
            "team": team.pk,
            "amount": "250.50",
            "period": "monthly",
            "enforcement": "hard",
            "thresholds": "50, 80%, 100",
            "emails": "fin@acme.test\n\n ops@acme.test ",
            "webhooks": "",
        },
    )
    budget = Budget.objects.get(org=org)
    assert response.status_code == 302 and response.url == url("budget_detail", budget_id=budget.pk)
    assert (budget.team, budget.amount, budget.hard, budget.thresholds) == (
        team,
        Decimal("250.50"),
        True,
        [50, 80, 100],
    )
    assert budget.emails == ["fin@acme.test", "ops@acme.test"]
    assert audit_actions(org)[-1] == "budget.created"


def valid_budget(**changes) -> dict:
    return {
        "name": "Cap",
        "scope": "org",
        "amount": "100",
        "period": "monthly",
        "enforcement": "soft",
        "thresholds": "50, 80, 100",
    } | changes


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "-5"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount": "1e30"}, "amount"),
        ({"amount": "12.345"}, "amount"),
        ({"amount": "lots"}, "amount"),
        ({"thresholds": "80, 50"}, "thresholds"),
        ({"thresholds": "0, 50"}, "thresholds"),
        ({"thresholds": "50, 150"}, "thresholds"),
        ({"thresholds": "50, 50"}, "thresholds"),
        ({"thresholds": "half"}, "thresholds"),
        ({"period": "hourly"}, "period"),
        ({"scope": "galaxy"}, "scope"),
        ({"scope": "team"}, "team"),
        ({"scope": "key"}, "key"),
        ({"scope": "team", "team": "not-a-uuid"}, "team"),
        ({"emails": "not an address"}, "emails"),
    ],
)
def test_bad_budget_input_is_a_field_error(org, team, client_for, changes, field):
    response = client_for("finance").post(BUDGETS, valid_budget(**changes))
    assert response.status_code == 400
    assert field_error(response, f"id_{field}")
    assert not Budget.objects.exists()


def test_another_orgs_team_is_refused(org, other_org, client_for):
    foreign = Team.objects.get(org=other_org)
    response = client_for("finance").post(BUDGETS, valid_budget(scope="team", team=foreign.pk))
    assert response.status_code == 400
    assert "Choose one of the teams listed." in field_error(response, "id_team")
    assert not Budget.objects.exists()


def test_meters_turn_amber_at_the_first_threshold_below_100_and_red_at_100(org, team, keys, client_for):
    for name, cost in (("Green", "30"), ("Amber", "60"), ("Red", "120")):
        other, _ = issue_key(actor=SYSTEM, team=team, name=f"key {name}")
        create_budget(actor=SYSTEM, org=org, name=name, scope="key", key=other, amount="100", period="monthly")
        spend(org, team=team, key=other, cost=cost)
    page = text(client_for("finance").get(BUDGETS))
    meters = dict(re.findall(r'budget-meter meter-(\w+)".*?aria-label="Spend of the budget (\w+)"', page, re.S))
    assert meters == {"ok": "Green", "warning": "Amber", "over": "Red"}
    assert "<strong>60.0%</strong> · $60.00 of $100.00" in page
    assert 'aria-valuenow="100.0"' in page  # 120% is capped for the meter, stated in full in its text
    assert "$120.00 of $100.00, 120.0%, at or over budget" in page


def test_meter_levels():
    assert meter_level(Decimal("79.9"), [80, 100]) == "ok"
    assert meter_level(Decimal(80), [80, 100]) == "warning"
    assert meter_level(Decimal(99), [100]) == "ok"  # no threshold below 100: green until the cap
    assert meter_level(Decimal(100), [50]) == "over"
    assert budget_meter(Decimal("12.5"), Decimal(50), [50]).percent == Decimal("25.0")


def test_bulk_spend_equals_budget_spend_for_every_scope_and_period(org, team, data_team, keys):
    now = timezone.now()
    budgets = [
        create_budget(actor=SYSTEM, org=org, name="Org total", scope="org", amount="10", period="total"),
        create_budget(actor=SYSTEM, org=org, name="Team day", scope="team", team=team, amount="10", period="daily"),
        create_budget(
            actor=SYSTEM, org=org, name="Key week", scope="key", key=keys["data"], amount="10", period="weekly"
        ),
        create_budget(
            actor=SYSTEM, org=org, name="Team month", scope="team", team=data_team, amount="10", period="monthly"
        ),
    ]
    spend(org, team=team, key=keys["platform"], cost="1.000001", at=now - timedelta(minutes=1))
    spend(org, team=data_team, key=keys["data"], cost="2.5", at=now - timedelta(minutes=2))
    spend(org, team=data_team, key=keys["data"], cost="4", at=now - timedelta(days=40))
    spend(org, team=team, key=keys["platform"], cost="8", at=now - timedelta(days=3))
    bulk = budget_spends(budgets, now)
    assert bulk == {budget.pk: budget_spend(budget, now) for budget in budgets}
    assert bulk[budgets[0].pk] == Decimal("15.500001")


def test_the_budget_list_costs_the_same_queries_for_3_and_30_budgets(org, team, keys, client_for):
    client = client_for("finance")

    def add(start: int, count: int) -> None:
        for index in range(start, start + count):
            scope = ("org", "team", "key")[index % 3]
            create_budget(
                actor=SYSTEM,
                org=org,
                name=f"budget {index:02}",
                scope=scope,
                team=team if scope == "team" else None,
                key=keys["platform"] if scope == "key" else None,
                amount="100",
                period=("daily", "weekly", "monthly", "total")[index % 4],
            )

    add(0, 3)
    client.get(BUDGETS)
    few = count_queries(client, BUDGETS)
    add(3, 22)  # 25: one full page
    assert count_queries(client, BUDGETS) == few


def test_editing_a_budget_is_audited_and_bad_edits_are_field_errors(org, team, client_for):
    budget = create_budget(actor=SYSTEM, org=org, name="Cap", scope="team", team=team, amount="100", period="monthly")
    detail = url("budget_detail", budget_id=budget.pk)
    client = client_for("finance")
    page = client.get(detail)
    assert page.status_code == 200
    assert_every_control_labelled(page)
    bad = client.post(detail, valid_budget(amount="1e30"))
    assert bad.status_code == 400 and field_error(bad, "id_amount")
    response = client.post(detail, valid_budget(name="Bigger cap", amount="500", thresholds="90, 100"))
    assert response.status_code == 302
    budget.refresh_from_db()
    assert (budget.name, budget.amount, budget.hard, budget.thresholds) == (
        "Bigger cap",
        Decimal(500),
        False,
        [90, 100],
    )
    assert audit_actions(org)[-1] == "budget.updated"


def test_deleting_a_budget_asks_first_and_is_audited(org, team, client_for):
    budget = create_budget(actor=SYSTEM, org=org, name="Cap", scope="team", team=team, amount="100", period="monthly")
    delete = url("budget_delete", budget_id=budget.pk)
    client = client_for("finance")
    assert "Delete the budget" in text(client.get(delete))
    assert Budget.objects.filter(pk=budget.pk).exists()
    response = client.post(delete)
    assert response.status_code == 302 and response.url == BUDGETS
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert audit_actions(org)[-1] == "budget.deleted"


def test_the_detail_page_shows_alerts_with_their_delivery_log(org, team, client_for):
    budget = create_budget(actor=SYSTEM, org=org, name="Cap", scope="team", team=team, amount="100", period="monthly")
    alert = BudgetAlert.objects.create(budget=budget, period_start=month_start(), threshold=80, spend=Decimal("81.5"))
    AlertDelivery.objects.create(
        alert=alert, channel="webhook", target="https://hooks.acme.test/x", ok=False, detail="HTTP 502"
    )
    AlertDelivery.objects.create(alert=alert, channel="webhook", target="https://hooks.acme.test/x", attempt=2, ok=True)
    page = text(client_for("auditor").get(url("budget_detail", budget_id=budget.pk)))
    assert "80%" in page and "$81.50" in page
    assert "attempt 1" in page and "HTTP 502" in page and "attempt 2" in page
    assert page.index("attempt 1") < page.index("attempt 2")
    assert "Rebuild counters" not in page  # the auditor changes nothing


def test_rebuild_counters_raises_the_gateway_counter_to_the_ledger(org, team, keys, client_for, redis_client):
    budget = create_budget(actor=SYSTEM, org=org, name="Cap", scope="team", team=team, amount="100", period="monthly")
    spend(org, team=team, key=keys["platform"], cost="12.25")
    detail = url("budget_detail", budget_id=budget.pk)
    client = client_for("finance")
    assert "Rebuild counters" in text(client.get(detail))
    response = client.post(url("budget_reconcile", budget_id=budget.pk), follow=True)
    assert response.redirect_chain[-1][0] == detail
    assert "the ledger says $12.25" in text(response)
    assert client.get(url("budget_reconcile", budget_id=budget.pk)).status_code == 405


# Prices --------------------------------------------------------------------------------------


@pytest.fixture
def routes(org, actors, fresh_key_ring):
    return make_routes(org, actors["admin"])


@pytest.mark.parametrize("role", ["owner", "admin", "finance", "auditor"])
def test_the_price_page_renders_for_roles_that_read_budgets(org, routes, client_for, role):
    response = client_for(role).get(PRICES)
    assert response.status_code == 200
    page = text(response)
    assert "gpt-4o deployment" in page and "$2.50" in page
    assert "Suggested list prices" in page and "confirm each against your provider" in page
    assert "claude-haiku" in page and "$0.80" in page and "$4.00" in page
    assert ("Set a price" in page) == (role != "auditor")
    assert_every_control_labelled(response)


def test_setting_a_price_from_a_date_is_audited_and_listed_newest_first(org, routes, client_for):
    deployment = routes["gpt-4o"].deployments.get()
    client = client_for("finance")
    for day, price in (("2025-01-01T00:00", "3.00"), ("2025-06-01T00:00", "2.00")):
        response = client.post(
            PRICES,
            {
                "deployment": deployment.pk,
                "input_per_mtok": price,
                "output_per_mtok": "12",
                "cached_input_per_mtok": "0.5",
                "effective_from": day,
            },
        )
        assert response.status_code == 302, field_error(response, "id_effective_from")
    assert list(Price.objects.filter(deployment=deployment).values_list("effective_from", flat=True)) == [
        datetime(2025, 6, 1, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    ]
    assert audit_actions(org)[-2:] == ["price.set", "price.set"]
    page = text(client.get(PRICES)).split('id="catalog-title"')[1]
    assert page.index("2025-06-01 00:00") < page.index("2025-01-01 00:00")
    section = page.split("2025-06-01 00:00")[1].split("</tr>")[0]
    assert "$2.00" in section and "Current" in section


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"input_per_mtok": "-1"}, "input_per_mtok"),
        ({"output_per_mtok": "NaN"}, "output_per_mtok"),
        ({"cached_input_per_mtok": "1e30"}, "cached_input_per_mtok"),
        ({"effective_from": "yesterday"}, "effective_from"),
        ({"deployment": "not-a-uuid"}, "deployment"),
    ],
)
def test_bad_prices_are_field_errors(org, routes, client_for, changes, field):
    deployment = routes["gpt-4o"].deployments.get()
    data = {
        "deployment": deployment.pk,
        "input_per_mtok": "1",
        "output_per_mtok": "2",
        "cached_input_per_mtok": "0",
        "effective_from": "2025-01-01T00:00",
    } | changes
    response = client_for("finance").post(PRICES, data)
    assert response.status_code == 400
    assert field_error(response, f"id_{field}")
    assert not Price.objects.exists()


def test_the_same_moment_twice_is_a_field_error(org, routes, client_for):
    deployment = routes["gpt-4o"].deployments.get()
    data = {"deployment": deployment.pk, "input_per_mtok": "1", "output_per_mtok": "2", "effective_from": "2025-01-01"}
    client = client_for("finance")
    assert client.post(PRICES, data | {"cached_input_per_mtok": "0"}).status_code == 302
    again = client.post(PRICES, data | {"cached_input_per_mtok": "0"})
    assert again.status_code == 400 and "already starts" in field_error(again, "id_effective_from")


def test_the_price_page_costs_the_same_queries_for_3_and_30_deployments(org, actors, fresh_key_ring, client_for):
    client = client_for("finance")
    first = make_routes(org, actors["admin"], aliases=("a0", "a1", "a2"))["a0"].deployments.get()
    set_price(actor=SYSTEM, deployment=first, input_per_mtok="1", output_per_mtok="2")
    client.get(PRICES)
    few = count_queries(client, PRICES)
    for index in range(22):
        deployment = create_deployment(
            actor=SYSTEM,
            org=org,
            name=f"b{index}",
            credential=first.credential,
            upstream_model=f"b{index}",
            input_price_per_mtok=Decimal(1),
            output_price_per_mtok=Decimal(2),
        )
        set_price(actor=SYSTEM, deployment=deployment, input_per_mtok="1", output_per_mtok="2")
    assert count_queries(client, PRICES) == few


# Finance -------------------------------------------------------------------------------------


@pytest.fixture
def ledger(org, other_org, team, data_team, keys, routes):
    """This month: Platform $1.250001 + $0.50 on gpt-4o, Data $3.10 on claude-sonnet, a row
    with no deployment $0.000004. Last month: Data $100 (not counted). Another org: $7."""
    gpt = routes["gpt-4o"].deployments.get()
    claude = routes["claude-sonnet"].deployments.get()
    spend(org, team=team, key=keys["platform"], cost="1.250001", deployment=gpt, tokens=(1000, 10))
    spend(org, team=team, key=keys["platform"], cost="0.50", deployment=gpt, tokens=(500, 5))
    spend(org, team=data_team, key=keys["data"], cost="3.10", alias="claude-sonnet", deployment=claude, tokens=(30, 3))
    spend(org, team=data_team, key=keys["data"], cost="0.000004", alias="o1", tokens=(1, 1))
    spend(org, team=data_team, key=keys["data"], cost="100", at=month_start() - timedelta(minutes=1))
    foreign = Team.objects.get(org=other_org)
    spend(other_org, team=foreign, key=keys["data"], cost="7")


@pytest.mark.parametrize("role", ["owner", "admin", "finance", "auditor"])
def test_the_finance_page_renders_for_roles_that_read_spend(org, ledger, client_for, role):
    response = client_for(role).get(FINANCE)
    assert response.status_code == 200
    assert stats(response)["Spend this month"] == "$4.850005"
    assert_every_control_labelled(response)


def test_finance_totals_equal_the_hand_computed_ledger_sums(org, ledger, client_for):
    response = client_for("finance").get(FINANCE)
    found = stats(response)
    assert (found["Requests"], found["Input tokens"], found["Output tokens"]) == ("4", "1,531", "19")
    assert table_rows(response, "by-team-title") == {
        "Data": ["2", "31", "4", "$3.100004"],
        "Platform": ["2", "1,500", "15", "$1.750001"],
    }
    assert table_rows(response, "by-model-title") == {
        "claude-sonnet": ["1", "30", "3", "$3.10"],
        "gpt-4o": ["2", "1,500", "15", "$1.750001"],
        "o1": ["1", "1", "1", "$0.000004"],
    }
    assert table_rows(response, "by-provider-title") == {
        "OpenAI-compatible": ["3", "1,530", "18", "$4.850001"],
        "(unknown)": ["1", "1", "1", "$0.000004"],
    }
    by_key = table_rows(response, "by-key-title")
    assert [name.split(" ")[0] for name in by_key] == ["notebooks", "platform"]
    assert [row[-1] for row in by_key.values()] == ["$3.100004", "$1.750001"]
    page = text(response)
    assert '<title id="spend-chart-title">Spend per day this month (USD)</title>' in page
    assert "$4.850005 in total" in page
    assert "linear" in page


def test_the_linear_forecast_extends_the_daily_rate_to_month_end():
    assert linear_forecast(Decimal("10"), datetime(2025, 2, 5, 12, tzinfo=UTC)) == Decimal("56.00")  # 10/5*28
    assert linear_forecast(Decimal("31"), datetime(2025, 3, 1, tzinfo=UTC)) == Decimal("961.00")
    assert linear_forecast(Decimal(0), datetime(2025, 3, 31, tzinfo=UTC)) == Decimal("0.00")


def test_the_finance_page_costs_the_same_queries_for_3_and_30_spenders(org, team, users, client_for):
    client = client_for("finance")

    def add(start: int, count: int) -> None:
        for index in range(start, start + count):
            key, _ = issue_key(actor=SYSTEM, team=team, name=f"key {index}")
            spend(org, team=team, key=key, cost="0.01", alias=f"model-{index}")

    add(0, 3)
    client.get(FINANCE)
    few = count_queries(client, FINANCE)
    add(3, 27)
    assert count_queries(client, FINANCE) == few


def test_finance_users_land_on_the_finance_page(org, client_for):
    response = client_for("finance").get(reverse("orgs:home"))
    assert response.status_code == 302 and response.url == FINANCE
    assert client_for("admin").get(reverse("orgs:home")).url == reverse("orgs:dashboard", kwargs={"org_slug": "acme"})


# Chargeback ----------------------------------------------------------------------------------


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_the_chargeback_csv_equals_the_ledger_to_the_cent(org, team, data_team, keys, ledger, client_for):
    set_cost_center(actor=SYSTEM, team=team, cost_center="CC-100")
    idle = create_team(actor=SYSTEM, org=org, name="Idle")
    response = client_for("finance").get(CHARGEBACK, {"format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = csv_rows(response)
    by_team = {row["team"]: row for row in rows}
    assert (by_team["Platform"]["cost_center"], by_team["Platform"]["cost_usd"]) == ("CC-100", "1.750001")
    assert (by_team["Data"]["cost_center"], by_team["Data"]["cost_usd"]) == ("(none)", "3.100004")
    assert (by_team["Idle"]["team_id"], by_team["Idle"]["cost_usd"]) == (str(idle.pk), "0.000000")
    ledger_total = sum(
        UsageRecord.objects.filter(org=org, occurred_at__gte=month_start()).values_list("cost", flat=True), Decimal(0)
    )
    assert sum(Decimal(row["cost_usd"]) for row in rows) == ledger_total == Decimal("4.850005")
    assert sum(int(row["requests"]) for row in rows) == 4


def test_the_chargeback_page_groups_by_cost_center_for_the_chosen_month(org, team, data_team, keys, ledger, client_for):
    set_cost_center(actor=SYSTEM, team=team, cost_center="CC-100")
    set_cost_center(actor=SYSTEM, team=data_team, cost_center="CC-100")
    client = client_for("finance")
    page = text(client.get(CHARGEBACK))
    assert "CC-100" in page and "$4.850005" in page
    last_month = (month_start() - timedelta(days=1)).strftime("%Y-%m")
    previous = client.get(CHARGEBACK, {"month": last_month})
    assert previous.status_code == 200 and "$100.00" in text(previous)
    rows = csv_rows(client.get(CHARGEBACK, {"month": last_month, "format": "csv"}))
    assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal(100)


def test_deleted_teams_spend_still_counts_under_none(org, team, keys, client_for):
    gone = create_team(actor=SYSTEM, org=org, name="Gone")
    spend(org, team=gone, key=keys["platform"], cost="2.22")
    Team.objects.filter(pk=gone.pk).delete()
    rows = csv_rows(client_for("finance").get(CHARGEBACK, {"format": "csv"}))
    assert [(row["cost_center"], row["team"], row["cost_usd"]) for row in rows if row["team"] == "Deleted team"] == [
        ("(none)", "Deleted team", "2.220000")
    ]


def test_formulas_in_team_names_and_cost_centers_are_neutralised(org, keys, client_for):
    evil = create_team(actor=SYSTEM, org=org, name='=HYPERLINK("http://x")')
    set_cost_center(actor=SYSTEM, team=evil, cost_center="+SUM(A1)")
    for name in ("-2+3", "@cmd"):
        create_team(actor=SYSTEM, org=org, name=name)
    rows = csv_rows(client_for("finance").get(CHARGEBACK, {"format": "csv"}))
    cells = {row["team"] for row in rows} | {row["cost_center"] for row in rows}
    assert {'\'=HYPERLINK("http://x")', "'+SUM(A1)", "'-2+3", "'@cmd"} <= cells
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)
    assert csv_cell("\tx") == "'\tx" and csv_cell("\rx") == "'\rx" and csv_cell("plain") == "plain"


def test_the_csv_needs_spend_export(org, client_for):
    assert client_for("auditor").get(CHARGEBACK).status_code == 200
    assert client_for("auditor").get(CHARGEBACK, {"format": "csv"}).status_code == 403
    assert "Download CSV" not in text(client_for("auditor").get(CHARGEBACK))


@pytest.mark.parametrize("month", ["2025-13", "25-01", "1999-12", "junk"])
def test_a_bad_month_is_a_field_error(org, client_for, month):
    response = client_for("finance").get(CHARGEBACK, {"month": month})
    assert response.status_code == 400
    assert field_error(response, "id_month")


def test_setting_a_cost_center_is_audited_and_returns_to_the_month(org, team, client_for):
    client = client_for("finance")
    page = client.get(CHARGEBACK)
    assert_every_control_labelled(page)
    response = client.post(url("cost_center", team_id=team.pk), {"cost_center": " CC-7 ", "month": "2025-03"})
    assert response.status_code == 302 and response.url == f"{CHARGEBACK}?month=2025-03"
    team.refresh_from_db()
    assert team.cost_center == "CC-7"
    assert audit_actions(org)[-1] == "team.cost_center_changed"
    bad = client.post(url("cost_center", team_id=team.pk), {"cost_center": "bad\x01code", "month": "2025-03"})
    assert bad.status_code == 400
    assert field_error(bad, f"id_{team.pk}_cost_center")
    assert "March 2025" in text(bad)
    assert client.get(url("cost_center", team_id=team.pk)).status_code == 405


def test_the_chargeback_page_costs_the_same_queries_for_3_and_30_teams(org, keys, client_for):
    client = client_for("finance")

    def add(start: int, count: int) -> None:
        for index in range(start, start + count):
            team = create_team(actor=SYSTEM, org=org, name=f"team {index}")
            set_cost_center(actor=SYSTEM, team=team, cost_center=f"CC-{index % 4}")
            spend(org, team=team, key=keys["data"], cost="0.10")

    add(0, 3)
    client.get(CHARGEBACK)
    few = count_queries(client, CHARGEBACK)
    add(3, 27)
    assert count_queries(client, CHARGEBACK) == few

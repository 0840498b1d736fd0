"""The usage page: numbers equal a hand-computed example from hourly rollups; org-wide usage
needs spend.read, a team's usage is also open to its members; charts are inline SVG with a
title, a description and the same numbers as a table; the query count does not grow with rows."""

import html
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from budgets.charts import axis_ticks, format_usd
from budgets.models import UsageHourly
from budgets.views import usage_window
from keys.services import issue_key
from orgs.services import create_team
from tests.conftest import SYSTEM
from tests.orgs.test_views import assert_every_control_labelled, text

pytestmark = pytest.mark.django_db

USAGE = reverse("budgets:usage", kwargs={"org_slug": "acme"})


def this_hour() -> datetime:
    return timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollup(org, *, hour, team, key, alias="gpt-4o", requests=1, errors=0, tokens=(0, 0), cost="0", latency=0.0):
    return UsageHourly.objects.create(
        org=org,
        hour=hour,
        team_id=team.pk,
        key_id=key.pk,
        alias=alias,
        requests=requests,
        errors=errors,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost=Decimal(cost),
        latency_ms_sum=latency,
    )


@pytest.fixture
def data_team(org, users):
    return create_team(actor=SYSTEM, org=org, name="Data")


@pytest.fixture
def keys(org, team, data_team, users):
    """The developer's own key and a shared key in Platform, and a key in Data."""
    mine, _ = issue_key(actor=SYSTEM, team=team, name="dev laptop", user=users["developer"])
    shared, _ = issue_key(actor=SYSTEM, team=team, name="platform ci")
    data, _ = issue_key(actor=SYSTEM, team=data_team, name="notebooks")
    return {"mine": mine, "shared": shared, "data": data}


@pytest.fixture
def usage(org, team, data_team, keys):
    """The hand-computed example. In the last 7 days:
    Platform, dev laptop, gpt-4o, 2 hours ago:        10 requests, 1 error,  1000/500 tokens, $0.0125, 2500 ms
    Platform, platform ci, claude-sonnet, 1 day ago:    5 requests, 0 errors,  200/100 tokens, $0.004,  1000 ms
    Data, notebooks, gpt-4o, 3 days ago:               20 requests, 4 errors, 3000/1500 tokens, $0.10,  8000 ms
    and, 10 days ago (only in the last 30 days), Platform, dev laptop, gpt-4o: 100 requests, $1.00.
    Totals over 7 days: 35 requests, 5 errors (14.3%), 4200/2100 tokens, $0.1165, 11500/35 = 329 ms."""
    now = this_hour()
    rollup(
        org,
        hour=now - timedelta(hours=2),
        team=team,
        key=keys["mine"],
        requests=10,
        errors=1,
        tokens=(1000, 500),
        cost="0.0125",
        latency=2500,
    )
    rollup(
        org,
        hour=now - timedelta(days=1),
        team=team,
        key=keys["shared"],
        alias="claude-sonnet",
        requests=5,
        tokens=(200, 100),
        cost="0.004",
        latency=1000,
    )
    rollup(
        org,
        hour=now - timedelta(days=3),
        team=data_team,
        key=keys["data"],
        requests=20,
        errors=4,
        tokens=(3000, 1500),
        cost="0.10",
        latency=8000,
    )
    rollup(
        org,
        hour=now - timedelta(days=10),
        team=team,
        key=keys["mine"],
        requests=100,
        tokens=(9000, 9000),
        cost="1.00",
        latency=10000,
    )


def stats(response) -> dict[str, str]:
    found = re.findall(r'<span class="stat-label">(.*?)</span><span class="stat-value">(.*?)</span>', text(response))
    return {label: html.unescape(value) for label, value in found}


def table_rows(response, title_id: str) -> dict[str, list[str]]:
    """The rows of one of the "by ..." tables: first cell's text -> the other cells' texts."""
    section = text(response).split(f'id="{title_id}"')[1].split("</table>")[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1], re.S):
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        ]
        rows[cells[0]] = cells[1:]
    return rows


# The numbers ----------------------------------------------------------------------------------


def test_totals_equal_the_hand_computed_example(usage, client_for):
    response = client_for("finance").get(USAGE)
    assert response.status_code == 200
    assert stats(response) == {
        "Requests": "35",
        "Errors": "5",
        "Error rate": "14.3%",
        "Cost (USD)": "$0.1165",
        "Input tokens": "4,200",
        "Output tokens": "2,100",
        "Average latency": "329 ms",
    }


def test_tables_by_model_team_and_key(usage, client_for):
    response = client_for("finance").get(USAGE)
    by_model = table_rows(response, "by-model-title")
    assert by_model == {
        "gpt-4o": ["30", "5", "16.7%", "4,000", "2,000", "$0.1125", "350 ms"],
        "claude-sonnet": ["5", "0", "0.0%", "200", "100", "$0.004", "200 ms"],
    }
    assert list(by_model) == ["gpt-4o", "claude-sonnet"]  # highest cost first
    by_team = table_rows(response, "by-team-title")
    assert by_team["Data"][:2] == ["20", "4"] and by_team["Platform"][:2] == ["15", "1"]
    by_key = table_rows(response, "by-key-title")
    assert [name.split(" ")[0] for name in by_key] == ["notebooks", "dev", "platform"]


def test_the_period_filter_changes_the_window(usage, client_for):
    client = client_for("finance")
    assert stats(client.get(USAGE, {"days": 30}))["Requests"] == "135"
    assert stats(client.get(USAGE, {"days": 30}))["Cost (USD)"] == "$1.1165"
    assert stats(client.get(USAGE, {"days": 1}))["Requests"] == "10"  # one day ago is outside the last 24 hours


def test_team_model_and_key_filters(usage, keys, team, client_for):
    client = client_for("finance")
    platform = client.get(USAGE, {"team": team.pk})
    assert (stats(platform)["Requests"], stats(platform)["Cost (USD)"]) == ("15", "$0.0165")
    assert 'id="by-team-title"' not in text(platform)
    gpt = client.get(USAGE, {"model": "gpt-4o"})
    assert (stats(gpt)["Requests"], stats(gpt)["Errors"]) == ("30", "5")
    key = client.get(USAGE, {"key": keys["mine"].pk, "days": 30})
    assert stats(key)["Requests"] == "110"
    assert "Showing one key:" in text(key) and "dev laptop" in text(key)


def test_charts_are_inline_svg_with_title_description_and_a_data_table(usage, client_for):
    page = text(client_for("finance").get(USAGE))
    assert page.count("<svg") == 3
    for chart_id, title in [
        ("requests-chart", "Requests per day"),
        ("cost-chart", "Cost per day (USD)"),
        ("errors-chart", "Errors per day"),
    ]:
        assert f'aria-labelledby="{chart_id}-title {chart_id}-desc"' in page
        assert f'<title id="{chart_id}-title">{title}</title>' in page
    assert "35 in total, highest 20 at" in page  # the requests chart's description
    assert "$0.1165 in total" in page
    # The table under the chart. The 10 requests of two hours ago count on their UTC day, which
    # in the first two hours after midnight is also the day of the 5 requests of a day ago.
    now = this_hour()
    day = (now - timedelta(hours=2)).date()
    requests = 10 + (5 if (now - timedelta(days=1)).date() == day else 0)
    assert f'<tr><th scope="row">{day:%Y-%m-%d}</th><td class="num">{requests}</td></tr>' in page
    assert "<script" not in page.split("<main")[1].split("</main>")[0]


def test_hourly_charts_for_the_last_24_hours(usage, client_for):
    page = text(client_for("finance").get(USAGE, {"days": 1}))
    assert "Requests per hour" in page
    two_hours_ago = (this_hour() - timedelta(hours=2)).strftime("%Y-%m-%d %H:00 UTC")
    assert f'<tr><th scope="row">{two_hours_ago}</th><td class="num">10</td></tr>' in page


def test_an_empty_period_shows_zeros(org, client_for):
    response = client_for("finance").get(USAGE)
    assert response.status_code == 200
    assert stats(response)["Requests"] == "0" and stats(response)["Error rate"] == "—"
    assert "No requests in this period." in text(response)


# Who sees what ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "finance", "auditor"])
def test_roles_with_spend_read_see_the_whole_org(usage, client_for, role):
    response = client_for(role).get(USAGE)
    assert response.status_code == 200
    assert stats(response)["Requests"] == "35"
    assert_every_control_labelled(response)


@pytest.mark.parametrize("role", ["developer", "viewer"])
def test_team_members_choose_one_of_their_teams(usage, team, client_for, role):
    response = client_for(role).get(USAGE)
    assert response.status_code == 200
    assert f'href="{USAGE}?team={team.pk}"' in text(response)
    assert "Data" not in text(response) and "stat-value" not in text(response)


@pytest.mark.parametrize("role", ["developer", "viewer"])
def test_team_members_see_their_teams_usage(usage, team, client_for, role):
    response = client_for(role).get(USAGE, {"team": team.pk})
    assert response.status_code == 200
    assert stats(response)["Requests"] == "15"
    assert_every_control_labelled(response)
    assert "All teams" not in text(response)


def test_developers_see_only_the_names_of_keys_they_may_see(usage, team, client_for):
    by_key = table_rows(client_for("developer").get(USAGE, {"team": team.pk}), "by-key-title")
    names = list(by_key)
    assert len(names) == 2
    assert names[0].startswith("dev laptop ")  # the developer's own key, with its prefix
    assert names[1] == "A key you cannot see"  # the team's CI key: counted, not named
    assert "platform ci" not in text(client_for("developer").get(USAGE, {"team": team.pk}))


def test_people_outside_a_team_get_403_for_its_usage(usage, data_team, client_for):
    assert client_for("viewer").get(USAGE, {"team": data_team.pk}).status_code == 403
    assert client_for("developer").get(USAGE, {"team": data_team.pk}).status_code == 403


def test_outsiders_unknown_and_foreign_teams_get_404(usage, other_org, client_for):
    from orgs.models import Team

    foreign = Team.objects.get(org=other_org)
    assert client_for("outsider").get(USAGE).status_code == 404
    assert client_for("finance").get(USAGE, {"team": foreign.pk}).status_code == 404
    assert client_for("finance").get(USAGE, {"team": uuid.uuid4()}).status_code == 404
    assert client_for("finance").get(USAGE, {"team": "junk"}).status_code == 404
    assert client_for("outsider").get(USAGE, {"team": "junk"}).status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [({"days": "5"}, "days"), ({"key": "not-a-key"}, "key"), ({"model": "m" * 201}, "model")],
)
def test_bad_filters_are_answered_next_to_their_field(usage, client_for, query, field):
    response = client_for("finance").get(USAGE, query)
    assert response.status_code == 400
    assert f'id="id_{field}_error"' in text(response)
    assert stats(response)["Requests"] == "35"  # the defaults still show


# Query counts ---------------------------------------------------------------------------------


def count_queries(client, path: str, query: dict) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path, query).status_code == 200
    return len(queries)


@pytest.mark.parametrize(("role", "scoped"), [("finance", False), ("developer", True)])
def test_the_page_costs_the_same_queries_for_3_and_30_rows(org, team, users, client_for, role, scoped):
    client = client_for(role)
    query = {"team": team.pk} if scoped else {}

    def add(start: int, count: int) -> None:
        for index in range(start, start + count):
            key, _ = issue_key(
                actor=SYSTEM, team=team, name=f"key {index}", user=users["developer"] if index % 2 else None
            )
            rollup(
                org,
                hour=this_hour() - timedelta(hours=index),
                team=team,
                key=key,
                alias=f"model-{index}",
                requests=index + 1,
                cost="0.01",
            )

    add(0, 3)
    client.get(USAGE, query)
    few = count_queries(client, USAGE, query)
    add(3, 27)
    many = count_queries(client, USAGE, query)
    assert few == many


# Chart and window helpers ---------------------------------------------------------------------


def test_windows_end_with_the_current_hour_or_day():
    now = datetime(2025, 3, 4, 13, 25, tzinfo=UTC)
    hourly = usage_window(1, now)
    assert (hourly.since, hourly.until, len(hourly.starts)) == (
        datetime(2025, 3, 3, 14, tzinfo=UTC),
        datetime(2025, 3, 4, 14, tzinfo=UTC),
        24,
    )
    weekly = usage_window(7, now)
    assert (weekly.since, weekly.until) == (datetime(2025, 2, 26, tzinfo=UTC), datetime(2025, 3, 5, tzinfo=UTC))


def test_axis_ticks_are_round_and_cover_the_highest_value():
    assert axis_ticks(Decimal(0), whole=True) == [0, 1]
    assert axis_ticks(Decimal(7), whole=True) == [0, 2, 4, 6, 8]
    assert axis_ticks(Decimal("0.0034"), whole=False)[-1] == Decimal("0.004")
    assert format_usd(Decimal("1234.5")) == "$1,234.50" and format_usd(Decimal("0.00042")) == "$0.00042"


# Navigation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "shown"),
    [
        ("owner", {"Finance", "Budgets", "Prices"}),
        ("finance", {"Finance", "Budgets", "Prices"}),
        ("auditor", {"Finance", "Budgets", "Prices"}),
        ("developer", set()),
        ("viewer", set()),
    ],
)
def test_the_sidebar_offers_the_finance_pages_by_capability(org, client_for, role, shown):
    sidebar = text(client_for(role).get(USAGE)).split('<nav class="sidebar"')[1].split("</nav>")[0]
    links = {
        "Finance": reverse("budgets:finance", kwargs={"org_slug": "acme"}),
        "Budgets": reverse("budgets:budget_list", kwargs={"org_slug": "acme"}),
        "Prices": reverse("budgets:price_list", kwargs={"org_slug": "acme"}),
    }
    assert {name for name, link in links.items() if f'href="{link}"' in sidebar} == shown

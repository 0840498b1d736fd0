"""The SLO report and leaderboard pages, the report API, and the burn-rate alerts: figures as the
ledger says, bad input a 400, constant query counts, an alert once per policy per hour."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from budgets.alerts import sign, webhook_secret
from sla import alerts, tasks
from sla.models import SlaPolicy
from tests.sla.test_reports import record

pytestmark = pytest.mark.django_db

REPORTS = reverse("slo:reports", kwargs={"org_slug": "acme"})
LEADERBOARD = reverse("slo:leaderboard", kwargs={"org_slug": "acme"})
API = reverse("api:slo:reports", kwargs={"org_slug": "acme"})


@pytest.fixture
def policy(org):
    return SlaPolicy.objects.create(
        org=org,
        name="Default",
        slo_availability=Decimal("99.9"),
        alert_emails=["oncall@acme.test"],
        alert_webhooks=["https://hooks.example.com/slo"],
    )


def traffic(org, team, *, requests: int, failing: int, minutes_ago: int = 10, alias="gpt-4o"):
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    for index in range(requests):
        failed = index < failing
        record(
            org,
            team,
            alias=alias,
            latency=100.0 + index,
            ttft=10.0,
            status=502 if failed else 200,
            error_code="upstream_error" if failed else "",
            at=at,
        )


def test_report_page_shows_targets_against_measured(client_for, org, team, policy):
    traffic(org, team, requests=10, failing=1)
    response = client_for("auditor").get(REPORTS, {"window": "24h"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Last 24 hours" in page
    assert "90.000%" in page  # 9 of 10
    assert "✗ Breached" in page and "≥ 99.900%" in page
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chart"' in page
    assert 'id="by-route"' in page and 'id="by-deployment"' in page
    assert "upstream_error" in page


def test_bad_window_shows_an_error_and_the_default(client_for, org, policy):
    response = client_for("auditor").get(REPORTS, {"window": "5y", "policy": "nonsense"})
    assert response.status_code == 200
    assert "Last 30 days" in response.content.decode()
    assert response.context["form"].errors.keys() == {"window", "policy"}


def test_leaderboard(client_for, org, team):
    traffic(org, team, requests=4, failing=1, alias="o1")
    traffic(org, team, requests=2, failing=0, alias="gpt-4o")
    response = client_for("auditor").get(LEADERBOARD)
    assert response.status_code == 200
    rows = response.context["rows"]
    assert [(row.key, row.requests, row.error_rate) for row in rows] == [
        ("o1", 4, Decimal("0.25")),
        ("gpt-4o", 2, Decimal(0)),
    ]
    assert "25.00%" in response.content.decode()


@pytest.mark.parametrize("url", [REPORTS, LEADERBOARD])
def test_pages_cost_the_same_queries_for_few_and_many_rows(client_for, org, team, policy, url):
    client = client_for("owner")
    traffic(org, team, requests=2, failing=1, alias="a")
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    for alias in ("b", "c", "d", "e"):
        traffic(org, team, requests=5, failing=2, alias=alias)
    with CaptureQueriesContext(connection) as many:
        assert client.get(url).status_code == 200
    assert len(many) == len(few)


def test_api_returns_the_figures(client_for, org, team, policy):
    traffic(org, team, requests=10, failing=2)
    response = client_for("auditor").get(API, {"window": "1h", "group_by": "policy"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["window"], body["group_by"]) == ("1h", "policy")
    [row] = body["rows"]
    assert (row["key"], row["requests"], row["failed"]) == (str(policy.pk), 10, 2)
    assert Decimal(row["availability"]) == Decimal("0.8")
    assert Decimal(row["burn_rate"]) == Decimal(200)  # 20% failed where 0.1% is allowed
    assert Decimal(row["error_budget_remaining"]) == Decimal(-199)
    assert row["breaches"] == ["availability"]
    assert row["errors"] == [{"code": "upstream_error", "count": 2, "rate": "0.200000"}]
    assert row["latency_ms"]["p50"] == pytest.approx(104.5)

    by_route = client_for("auditor").get(API, {"group_by": "route"}).json()
    assert [(row["key"], row["requests"]) for row in by_route["rows"]] == [("gpt-4o", 10)]


@pytest.mark.parametrize(
    "query", [{"window": "2d"}, {"group_by": "team"}, {"policy": "00000000-0000-0000-0000-000000000000"}]
)
def test_api_refuses_bad_input(client_for, org, policy, query):
    response = client_for("auditor").get(API, query)
    assert response.status_code == 400
    assert set(response.json()) == set(query)


# Burn-rate alerts -------------------------------------------------------------------------------


def test_a_failing_window_fires_once_and_delivers(org, team, policy, django_capture_on_commit_callbacks):
    traffic(org, team, requests=20, failing=18, minutes_ago=5)
    with (
        mock.patch("sla.tasks.send_burn_alert_email.delay") as email,
        mock.patch("sla.tasks.deliver_burn_alert_webhook.delay") as webhook,
        django_capture_on_commit_callbacks(execute=True),
    ):
        fired = alerts.check_slo_burn(org.pk)
    assert len(fired) == 1
    event = fired[0]
    assert (event.action, event.target_id, event.actor_label) == ("sla.burn_alert", str(policy.pk), "slo-monitor")
    assert event.diff["windows"]["1h"] == {"failed": 18, "requests": 20, "burn_rate": "900.00"}
    email.assert_called_once_with(str(event.uuid))
    webhook.assert_called_once_with(str(event.uuid), "https://hooks.example.com/slo", 1)
    assert alerts.deliver_burn_email(str(event.uuid)) is True
    assert len(mail.outbox) == 1 and "Default" in mail.outbox[0].subject
    assert mail.outbox[0].to == ["oncall@acme.test"] and "18 of 20 requests failed" in mail.outbox[0].body

    # Within the hour, another check records nothing and sends nothing.
    assert alerts.check_slo_burn(org.pk) == []
    assert AuditEvent.objects.filter(org=org, action="sla.burn_alert").count() == 1

    # A redelivered email task sends nothing again.
    tasks.send_burn_alert_email.apply(args=(str(event.uuid),)).get()
    assert len(mail.outbox) == 1


def test_a_healthy_window_does_not_fire(org, team, policy):
    traffic(org, team, requests=1000, failing=1, minutes_ago=5)  # 0.1%: burn rate 1
    assert alerts.check_slo_burn(org.pk) == []
    assert not AuditEvent.objects.filter(org=org, action="sla.burn_alert").exists()


def test_only_the_short_window_burning_does_not_fire(org, team, policy):
    traffic(org, team, requests=2, failing=2, minutes_ago=5)
    traffic(org, team, requests=10_000, failing=0, minutes_ago=180)  # the 6 hours are healthy
    assert alerts.check_slo_burn(org.pk) == []


def test_the_webhook_is_signed_and_logged(org, team, policy, django_capture_on_commit_callbacks):
    traffic(org, team, requests=10, failing=10, minutes_ago=5)
    with mock.patch("sla.tasks.deliver_burn_alert_webhook.delay"):
        [event] = alerts.check_slo_burn(org.pk)
    response = mock.Mock(status_code=204)
    with (
        mock.patch("sla.alerts.check_upstream_url"),
        mock.patch("budgets.alerts.httpx.Client") as client,
    ):
        client.return_value.__enter__.return_value.post.return_value = response
        outcome = alerts.deliver_burn_webhook(str(event.uuid), "https://hooks.example.com/slo")
    assert outcome.ok
    _args, kwargs = client.return_value.__enter__.return_value.post.call_args
    headers, body = kwargs["headers"], kwargs["content"]
    assert headers["X-Gatehouse-Event"] == "sla.burn_rate"
    assert headers["X-Gatehouse-Signature"] == sign(body, webhook_secret(org))
    assert json.loads(body)["policy"]["id"] == str(policy.pk)
    delivery = AuditEvent.objects.get(org=org, action="sla.burn_alert_delivery")
    assert delivery.diff["target"] == "hooks.example.com"  # the URL may carry a token: host only
    assert delivery.diff["ok"] is True
    # Delivered once: a second run does not post again.
    assert alerts.deliver_burn_webhook(str(event.uuid), "https://hooks.example.com/slo").detail == "already delivered"

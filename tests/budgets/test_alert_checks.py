"""Budget alert checks: what they read (the hourly rollups, never the whole ledger) and how often
they run (at most once per org per check interval, yet within one interval of any spend), with
the real PostgreSQL, Redis, broker and Celery worker."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import redis
from celery.signals import after_task_publish, task_postrun, task_prerun
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from budgets import alerts, tasks
from budgets.alerts import check_budget_alerts, request_alert_checks
from budgets.models import Budget, BudgetAlert
from budgets.services import create_budget
from budgets.spend import budget_spend, rollup_spends
from controlplane.celery import app as celery_app
from keys.services import issue_key
from tests.budgets.test_alerts import (
    NOW,
    spend,
    team_budget,
    wait_until,
)
from tests.conftest import SYSTEM

QUEUE = django_settings.CELERY_TASK_DEFAULT_QUEUE


@pytest.fixture
def empty_test_queue():
    """The suite's queue on the real broker, emptied; yields the messages waiting on it."""
    with celery_app.connection_for_write() as broker:
        broker.default_channel.queue_purge(QUEUE)
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)

    def waiting_checks() -> list[dict]:
        messages = [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]
        return [message["headers"] for message in messages if message["headers"]["task"] == tasks.check_alerts.name]

    yield waiting_checks
    with celery_app.connection_for_write() as broker:
        broker.default_channel.queue_purge(QUEUE)
    client.close()


@pytest.fixture
def check_tasks():
    """Every check_alerts task published, and every one run, as the broker and worker see them."""
    seen: dict[str, list] = {"published": [], "started": [], "ran": []}
    lock = threading.Lock()

    def published(sender=None, body=None, headers=None, **_):
        if sender == tasks.check_alerts.name:
            with lock:
                seen["published"].append((tuple(body[0]), headers.get("eta"), time.monotonic()))

    def started(sender=None, args=None, **_):
        if getattr(sender, "name", None) == tasks.check_alerts.name:
            with lock:
                seen["started"].append((tuple(args), time.monotonic()))

    def ran(sender=None, args=None, **_):
        if getattr(sender, "name", None) == tasks.check_alerts.name:
            with lock:
                seen["ran"].append((tuple(args), time.monotonic()))

    after_task_publish.connect(published, weak=False)
    task_prerun.connect(started, weak=False)
    task_postrun.connect(ran, weak=False)
    yield seen
    after_task_publish.disconnect(published)
    task_prerun.disconnect(started)
    task_postrun.disconnect(ran)


# What a check reads ----------------------------------------------------------------------


def test_rollup_spends_equal_the_ledgers_in_every_period_and_scope(org, team, actors, clean_redis):
    key, _ = issue_key(actor=SYSTEM, team=team, name="ci")
    budgets = [
        team_budget(actors, org, team, name="team daily", period="daily"),
        team_budget(actors, org, team, name="team weekly", period="weekly"),
        create_budget(actor=SYSTEM, org=org, name="org monthly", scope="org", amount="100", period="monthly"),
        create_budget(actor=SYSTEM, org=org, name="key total", scope="key", key=key, amount="100", period="total"),
    ]
    today = NOW.replace(hour=0)  # Monday 2025-03-10, so also the week's first moment
    moments = [
        today,  # the first moment of the day, week and month... (a Monday, not the 1st)
        today - timedelta(microseconds=500),  # the last of yesterday and of last week
        today + timedelta(hours=23, minutes=59, seconds=59, microseconds=999_500),  # the last of today
        today + timedelta(days=1),  # tomorrow: no current period holds it
        NOW.replace(day=1, hour=0),  # the first of the month
        NOW.replace(day=1, hour=0) - timedelta(microseconds=500),  # the last of February
        NOW - timedelta(days=400),
        NOW + timedelta(minutes=17),
    ]
    for index, moment in enumerate(moments):
        spend(org, team, f"0.{index + 1:06d}", at=moment, key_id=key.pk)
        spend(org, team, "1.000001", at=moment)  # another key of the team
    for now in (NOW, today + timedelta(days=1), NOW.replace(day=1, hour=0), NOW + timedelta(days=30)):
        expected = {budget.pk: budget_spend(budget, now) for budget in budgets}
        assert rollup_spends(budgets, now) == expected, now
    # Today at NOW: three moments, each 1.000001 on one key and 0.00000n on the other.
    assert rollup_spends(budgets, NOW)[budgets[0].pk] == Decimal("3.000015")


def test_a_check_with_a_local_time_reads_the_utc_period(org, team, actors, clean_redis):
    team_budget(actors, org, team, period="daily", amount=Decimal("1.00"), thresholds=[50])
    spend(org, team, "0.60", at=NOW.replace(hour=0))
    # 04:30 on March 10th in UTC+05:30 is still March 9th in UTC: today's spend is not counted.
    local = NOW.replace(hour=0).astimezone(timezone(timedelta(hours=5, minutes=30))) - timedelta(hours=1)
    assert check_budget_alerts(org.pk, now=local) == []
    (alert,) = check_budget_alerts(org.pk, now=NOW.astimezone(timezone(timedelta(hours=-8))))
    assert alert.period_start == datetime(2025, 3, 10, tzinfo=UTC)


def many_budgets(actors, org, team, count: int) -> list[Budget]:
    return [team_budget(actors, org, team, name=f"budget {n}", amount=Decimal("1000.00")) for n in range(count)]


def test_a_check_never_reads_the_ledger(org, team, actors, clean_redis):
    team_budget(actors, org, team)
    create_budget(actor=SYSTEM, org=org, name="everything", scope="org", amount="1000", period="total")
    spend(org, team, "6.00")
    assert [alert.threshold for alert in check_budget_alerts(org.pk, now=NOW)] == [50]
    with CaptureQueriesContext(connection) as queries:
        assert check_budget_alerts(org.pk, now=NOW) == []
    assert queries.captured_queries, "the check read nothing"
    assert not [query["sql"] for query in queries if "budgets_usagerecord" in query["sql"]]


def test_a_check_costs_the_same_queries_whatever_the_ledger_and_budget_count(org, team, actors, clean_redis):
    team_budget(actors, org, team)
    spend(org, team, "6.00")
    check_budget_alerts(org.pk, now=NOW)  # fires 50%; later checks only find it recorded

    def queries_of_a_check() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert check_budget_alerts(org.pk, now=NOW) == []
        return len(queries)

    few = queries_of_a_check()
    for minute in range(90):  # ten times the ledger, over two hours
        spend(org, team, "0.01", at=NOW - timedelta(minutes=minute))
    many_budgets(actors, org, team, 10)
    assert queries_of_a_check() == few == 3  # the budgets, their spend, the thresholds recorded


# How often a check runs ------------------------------------------------------------------


def test_checks_of_an_org_are_one_interval_apart_and_every_batch_is_covered(
    org, other_org, clean_redis, empty_test_queue, settings
):
    settings.GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS = 1
    org_id, other_id = str(org.pk), str(other_org.pk)

    assert request_alert_checks([org.pk, other_org.pk]) == {org_id: 0, other_id: 0}  # quiet orgs: at once
    trailing = request_alert_checks([org.pk])[org_id]  # may not have been seen by that check
    assert 0.5 <= trailing <= 1.0
    for _ in range(20):  # the check scheduled for later will see these
        assert request_alert_checks([org.pk]) == {}

    waiting = empty_test_queue()
    assert sorted((check["argsrepr"], check["eta"] is None) for check in waiting) == sorted(
        [(repr(tuple(sorted([org_id, other_id]))), True), (repr((org_id,)), False)]
    )

    time.sleep(trailing + 0.05)  # the trailing check is due: a batch now may come after it read
    again = request_alert_checks([org.pk])[org_id]
    assert 0.5 <= again <= 1.0  # one interval after the trailing one, not sooner
    time.sleep(again + 1.05)  # a whole interval without a check: the next batch is checked at once
    assert request_alert_checks([org.pk]) == {org_id: 0}
    assert len(empty_test_queue()) == 4


def test_a_lost_schedule_costs_one_check_more_not_an_alert(org, clean_redis, empty_test_queue, settings):
    settings.GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS = 60
    assert request_alert_checks([org.pk]) == {str(org.pk): 0}
    assert request_alert_checks([org.pk]) == {str(org.pk): pytest.approx(60, abs=0.1)}
    clean_redis.delete(alerts._schedule_key(org.pk))  # as if Redis lost its data
    assert request_alert_checks([org.pk]) == {str(org.pk): 0}
    assert len(empty_test_queue()) == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_worker_on_test_queue")
def test_many_batches_within_an_interval_run_two_checks_not_one_per_batch(
    org, team, actors, clean_redis, settings, check_tasks
):
    settings.GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS = 4
    team_budget(actors, org, team, amount=Decimal("1000.00"))
    started = time.monotonic()
    for _ in range(8):  # each batch commits once the worker had time to run the check before
        spend(org, team, "0.01", at=datetime.now(UTC))
        time.sleep(0.3)
    assert time.monotonic() - started < 4, "the batches took longer than one interval"
    assert [args for args, _eta, _at in check_tasks["published"]] == [(str(org.pk),)] * 2
    leading, trailing = check_tasks["published"]
    assert leading[1] is None and trailing[1] is not None
    wait_until(lambda: len(check_tasks["ran"]) == 2, timeout=8, what="the trailing check")
    (_, first), (_, second) = check_tasks["started"]
    assert second - first >= 3.5  # an interval apart, less the first one's time in the queue
    time.sleep(0.5)
    assert len(check_tasks["published"]) == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_worker_on_test_queue")
def test_a_threshold_crossed_right_after_a_check_fires_within_the_interval(
    org, team, actors, clean_redis, settings, check_tasks
):
    settings.GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS = 2
    budget = team_budget(actors, org, team, thresholds=[50])
    spend(org, team, "1.00", at=datetime.now(UTC))
    wait_until(lambda: check_tasks["ran"], timeout=5, what="the first check")
    assert not BudgetAlert.objects.exists()

    spend(org, team, "4.00", at=datetime.now(UTC))  # 50% crossed just after a check read 10%
    crossed = time.monotonic()
    time.sleep(0.5)
    assert not BudgetAlert.objects.exists()  # no check of its own: the trailing one will see it
    alert = wait_until(lambda: BudgetAlert.objects.filter(budget=budget).first(), timeout=4, what="the alert")
    assert time.monotonic() - crossed <= 2 + 1.0  # the interval, and a little for the worker
    assert (alert.threshold, alert.spend) == (50, Decimal("5.000000"))
    assert len(check_tasks["published"]) == 2


def test_the_periodic_sweep_checks_every_org_that_has_budgets(org, team, other_org, actors, clean_redis):
    assert django_settings.CELERY_BEAT_SCHEDULE["check-budget-alerts"]["task"] == tasks.check_alerts.name
    team_budget(actors, org, team, thresholds=[50])
    other_team = other_org.teams.get()
    create_budget(actor=SYSTEM, org=other_org, name="Other", scope="team", team=other_team, amount="1", period="total")
    now = datetime.now(UTC)
    spend(org, team, "5.00", at=now)
    spend(other_org, other_team, "1.00", at=now)
    tasks.check_alerts()  # as beat sends it: no ids
    fired = sorted((alert.budget.org.slug, alert.threshold) for alert in BudgetAlert.objects.select_related("budget"))
    assert fired == [("acme", 50), ("other", 50), ("other", 80), ("other", 100)]


@pytest.mark.django_db
def test_a_failing_alert_check_hook_can_be_logged_and_does_not_stop_ingestion(org):
    """Robust on_commit hooks that raise (Redis or the broker down) are logged by Django by their
    __qualname__: a functools.partial has none, and the logging itself crashed the ingestion
    process in CI (tests/budgets/test_ingest_outages.py)."""
    with transaction.atomic():
        alerts.request_alert_checks_on_commit([org.pk])
        _savepoints, hook, robust = connection.run_on_commit[-1]
    assert robust and hook.__qualname__.endswith("check_alerts_after_commit")

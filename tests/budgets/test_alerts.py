"""Budget alerts: each threshold fires once per period, by email and by signed webhook, with
retries through a real Celery worker on the real broker."""

import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection

from budgets import alerts, tasks
from budgets.alerts import check_budget_alerts, deliver_alert_email, deliver_alert_webhook, webhook_secret
from budgets.ingestion import StoreOutcome, store_events
from budgets.models import AlertDelivery, BudgetAlert
from budgets.services import create_budget

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def spend(org, team, amount: str, at: datetime = NOW, key_id=None) -> None:
    """Spend as the gateway reports it, through ingestion: the ledger row and its hourly rollup,
    which the alert checks read."""
    fields = {
        "request_id": uuid.uuid4().hex,
        "org_id": str(org.pk),
        "team_id": str(team.pk),
        "key_id": str(key_id or uuid.uuid4()),
        "alias": "gpt-4o",
        "endpoint": "chat.completions",
        "input_tokens": "100",
        "output_tokens": "50",
        "cost_micros": str(int(Decimal(amount) * 1_000_000)),
        "latency_ms": "10.0",
        "ttft_ms": "2.0",
        "status": "200",
        "ts": repr(at.timestamp()),
    }
    outcome = store_events([(b"1-0", {name.encode(): value.encode() for name, value in fields.items()})])
    assert outcome == StoreOutcome(1, [])


def team_budget(actors, org, team, **overrides):
    values = {
        "name": "Platform monthly",
        "scope": "team",
        "team": team,
        "amount": Decimal("10.00"),
        "period": "monthly",
        "thresholds": [50, 80, 100],
    }
    values.update(overrides)
    return create_budget(actor=actors["finance"], org=org, **values)


# A webhook receiver on 127.0.0.1 ---------------------------------------------------------


class Receiver:
    """Records every POST; answers with the statuses given in turn, then the last one."""

    def __init__(self, statuses=(200,), headers=None):
        self.statuses, self.headers = list(statuses), headers or {}
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                index = min(len(receiver.requests), len(receiver.statuses)) - 1
                self.send_response(receiver.statuses[index])
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/budget"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, f"{len(self.requests)} requests after {timeout}s, wanted {count}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=(200,), headers=None) -> Receiver:
        made.append(Receiver(statuses, headers))
        return made[-1]

    yield make
    for item in made:
        item.close()


def wait_until(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met after {timeout}s")


# Firing once -----------------------------------------------------------------------------


def test_each_threshold_fires_once_per_period(org, team, actors, clean_redis, django_capture_on_commit_callbacks):
    budget = team_budget(actors, org, team, emails=["cfo@acme.test"], webhooks=["http://127.0.0.1:9/hook"])
    spend(org, team, "4.99")
    assert check_budget_alerts(org.pk, now=NOW) == []

    spend(org, team, "0.01")  # exactly 50%
    with django_capture_on_commit_callbacks() as enqueued:
        fired = check_budget_alerts(org.pk, now=NOW)
    assert [alert.threshold for alert in fired] == [50]
    assert fired[0].spend == Decimal("5.000000")
    assert fired[0].period_start == datetime(2025, 3, 1, tzinfo=UTC)
    assert len(enqueued) == 2  # one email for every address, one webhook task per URL

    with django_capture_on_commit_callbacks() as enqueued:
        assert check_budget_alerts(org.pk, now=NOW) == []  # run twice: nothing new, nothing sent
    assert enqueued == []

    spend(org, team, "6.00")  # 110%: 80 and 100 both crossed at once
    assert [alert.threshold for alert in check_budget_alerts(org.pk, now=NOW)] == [80, 100]
    assert check_budget_alerts(org.pk, now=NOW) == []
    assert sorted(BudgetAlert.objects.filter(budget=budget).values_list("threshold", flat=True)) == [50, 80, 100]


def test_a_new_period_fires_again(org, team, actors, clean_redis):
    budget = team_budget(actors, org, team, period="daily", amount=Decimal("1.00"))
    spend(org, team, "0.60", at=NOW)
    assert [a.threshold for a in check_budget_alerts(org.pk, now=NOW)] == [50]
    tomorrow = NOW + timedelta(days=1)
    assert check_budget_alerts(org.pk, now=tomorrow) == []  # yesterday's spend is not today's
    spend(org, team, "0.55", at=tomorrow)
    again = check_budget_alerts(org.pk, now=tomorrow)
    assert [a.threshold for a in again] == [50]
    starts = sorted(BudgetAlert.objects.filter(budget=budget).values_list("period_start", flat=True))
    assert starts == [datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC)]


def test_only_the_budgets_own_scope_counts(org, team, other_org, actors, clean_redis):
    team_budget(actors, org, team, amount=Decimal("1.00"))
    org_budget = create_budget(
        actor=actors["finance"], org=org, name="Acme", scope="org", amount=Decimal("100.00"), period="monthly"
    )
    other_team = other_org.teams.get()
    spend(other_org, other_team, "50.00")  # another org's spend
    spend(org, team, "0.40")
    assert check_budget_alerts(org.pk, now=NOW) == []
    spend(org, team, "0.20")
    fired = check_budget_alerts(org.pk, now=NOW)
    assert [(a.budget.name, a.threshold) for a in fired] == [("Platform monthly", 50)]
    assert not BudgetAlert.objects.filter(budget=org_budget).exists()


def test_a_total_budget_fires_once_ever(org, team, actors, clean_redis):
    team_budget(actors, org, team, period="total", amount=Decimal("1.00"), thresholds=[100])
    spend(org, team, "1.00", at=NOW - timedelta(days=400))
    assert [a.threshold for a in check_budget_alerts(org.pk, now=NOW)] == [100]
    assert check_budget_alerts(org.pk, now=NOW + timedelta(days=400)) == []


@pytest.mark.django_db(transaction=True)
def test_racing_checks_record_each_threshold_once(org, team, actors, clean_redis):
    budget = team_budget(actors, org, team)
    spend(org, team, "10.00")
    barrier, fired, errors = threading.Barrier(4), [], []

    def check():
        try:
            barrier.wait()
            fired.extend(check_budget_alerts(org.pk, now=NOW))
        except Exception as error:  # reported by the assertion below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(alert.threshold for alert in fired) == [50, 80, 100]
    assert BudgetAlert.objects.filter(budget=budget).count() == 3


# Email -----------------------------------------------------------------------------------


def test_the_email_names_budget_scope_threshold_spend_amount_and_period_end(org, team, actors, clean_redis, mailoutbox):
    team_budget(actors, org, team, emails=["CFO@acme.test", "finance@acme.test"])
    spend(org, team, "8.123456")
    alert = check_budget_alerts(org.pk, now=NOW)[-1]
    assert alert.threshold == 80

    assert deliver_alert_email(alert.pk) is True
    (message,) = mailoutbox
    assert message.to == ["cfo@acme.test", "finance@acme.test"]
    assert message.subject == "Budget alert: Platform monthly reached 80% (Acme)"
    assert 'The monthly budget "Platform monthly" on the team Platform in Acme has reached 80%' in message.body
    assert "Spent:     $8.12 of $10.00" in message.body
    assert "Period:    until 2025-04-01 00:00 UTC" in message.body
    assert "hard cap" in message.body
    delivery = AlertDelivery.objects.get(alert=alert)
    assert (delivery.channel, delivery.ok, delivery.attempt) == ("email", True, 1)
    assert delivery.target == "cfo@acme.test, finance@acme.test"

    assert deliver_alert_email(alert.pk) is True  # the task run twice sends nothing more
    assert len(mailoutbox) == 1
    assert AlertDelivery.objects.filter(alert=alert).count() == 1


def test_a_failing_mail_server_is_logged_and_raised_for_a_retry(org, team, actors, clean_redis, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2  # nothing listens
    team_budget(actors, org, team, emails=["cfo@acme.test"], thresholds=[50])
    spend(org, team, "5.00")
    (alert,) = check_budget_alerts(org.pk, now=NOW)
    with pytest.raises(OSError):
        deliver_alert_email(alert.pk, attempt=1)
    delivery = AlertDelivery.objects.get(alert=alert)
    assert (delivery.ok, delivery.detail) == (False, "mail not sent: ConnectionRefusedError")


# Webhooks --------------------------------------------------------------------------------


def test_the_webhook_is_signed_with_the_orgs_secret(org, team, actors, clean_redis, receiver):
    hook = receiver()
    budget = team_budget(actors, org, team, webhooks=[hook.url], thresholds=[100])
    spend(org, team, "10.000001")
    (alert,) = check_budget_alerts(org.pk, now=NOW)

    outcome = deliver_alert_webhook(alert.pk, hook.url, 1)
    assert (outcome.ok, outcome.retry, outcome.detail) == (True, False, "HTTP 200")
    (request,) = hook.requests
    headers, body = request["headers"], request["body"]
    assert headers["X-Gatehouse-Event"] == "budget.threshold"
    assert headers["Content-Type"] == "application/json"
    secret = webhook_secret(org)
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Gatehouse-Signature"], expected)
    # Another org's secret, or a changed byte, does not verify.
    assert webhook_secret(type(org)(pk=uuid.uuid4())) != secret
    tampered = body.replace(b'"threshold":100', b'"threshold":10')
    assert hmac.new(secret.encode(), tampered, hashlib.sha256).hexdigest() != expected.removeprefix("sha256=")

    payload = json.loads(body)
    assert payload["alert_id"] == str(alert.pk)
    assert payload["budget"]["id"] == str(budget.pk)
    assert payload["budget"]["name"] == "Platform monthly"
    assert payload["budget"]["scope"] == "team"
    assert payload["org"]["slug"] == "acme"
    assert payload["threshold"] == 100
    assert payload["spend"] == "10.000001"
    assert payload["amount"] == "10.00"
    assert payload["period_start"] == "2025-03-01T00:00:00+00:00"
    assert payload["period_end"] == "2025-04-01T00:00:00+00:00"
    assert payload["fired_at"] == NOW.isoformat()
    assert secret not in body.decode()

    delivery = AlertDelivery.objects.get(alert=alert)
    assert (delivery.channel, delivery.target, delivery.ok, delivery.detail) == ("webhook", hook.url, True, "HTTP 200")
    assert deliver_alert_webhook(alert.pk, hook.url, 1).detail == "already delivered"  # run twice: sent once
    assert len(hook.requests) == 1


def test_a_url_refused_at_send_time_is_not_called(org, team, actors, clean_redis, receiver, settings):
    hook = receiver()
    team_budget(actors, org, team, webhooks=[hook.url], thresholds=[50])
    spend(org, team, "5.00")
    (alert,) = check_budget_alerts(org.pk, now=NOW)
    settings.GATEHOUSE_UPSTREAM_ALLOWLIST = []  # as if the host now resolved to a private address
    outcome = deliver_alert_webhook(alert.pk, hook.url, 1)
    assert (outcome.ok, outcome.retry) == (False, False)
    assert "loopback" in outcome.detail
    assert hook.requests == []
    assert AlertDelivery.objects.get(alert=alert).detail.startswith("refused:")


def test_redirects_are_not_followed_and_4xx_is_not_retried(org, team, actors, clean_redis, receiver):
    moved = receiver(statuses=(302,), headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    gone = receiver(statuses=(410,))
    team_budget(actors, org, team, webhooks=[moved.url, gone.url], thresholds=[50])
    spend(org, team, "5.00")
    (alert,) = check_budget_alerts(org.pk, now=NOW)
    redirected = deliver_alert_webhook(alert.pk, moved.url, 1)
    assert (redirected.ok, redirected.retry) == (False, False)
    assert redirected.detail == "HTTP 302: redirects are not followed"
    assert len(moved.requests) == 1
    refused = deliver_alert_webhook(alert.pk, gone.url, 1)
    assert (refused.ok, refused.retry, refused.detail) == (False, False, "HTTP 410")


def test_a_network_error_is_worth_a_retry(org, team, actors, clean_redis):
    team_budget(actors, org, team, webhooks=["http://127.0.0.1:9/hook"], thresholds=[50])
    spend(org, team, "5.00")
    (alert,) = check_budget_alerts(org.pk, now=NOW)
    outcome = deliver_alert_webhook(alert.pk, "http://127.0.0.1:9/hook", 1)
    assert (outcome.ok, outcome.retry, outcome.detail) == (False, True, "could not connect")


def test_the_tasks_are_named_and_bounded():
    assert tasks.check_alerts.name == "budgets.check_alerts"
    assert tasks.send_alert_email.name == "budgets.send_alert_email"
    assert tasks.deliver_webhook.name == "budgets.deliver_webhook"
    assert tasks.reconcile_budgets.name == "budgets.reconcile_budgets"
    for task in (tasks.check_alerts, tasks.send_alert_email, tasks.deliver_webhook, tasks.reconcile_budgets):
        assert task.ignore_result is True
    assert [tasks.webhook_backoff(n) for n in range(1, 6)] == [2, 4, 8, 16, 32]
    assert tasks.webhook_backoff(20) == tasks.WEBHOOK_BACKOFF_CAP_SECONDS
    assert alerts.WEBHOOK_MAX_ATTEMPTS == 6


# Through the real worker -----------------------------------------------------------------


@pytest.fixture
def quick_backoff(monkeypatch):
    # The worker runs in this process, so the patched backoff is the one it uses.
    monkeypatch.setattr(tasks, "webhook_backoff", lambda attempt: 0.1)


@pytest.mark.django_db(transaction=True)
def test_ingested_spend_alerts_by_email_and_webhook_through_the_worker(
    org, team, actors, clean_redis, receiver, mailoutbox, celery_worker_on_test_queue
):
    hook = receiver()
    budget = team_budget(actors, org, team, emails=["cfo@acme.test"], webhooks=[hook.url], thresholds=[50, 100])
    now = datetime.now(UTC)
    fields = {
        "request_id": "req-1",
        "org_id": str(org.pk),
        "team_id": str(team.pk),
        "key_id": str(uuid.uuid4()),
        "alias": "gpt-4o",
        "cost_micros": "6000000",  # $6 of $10: 50% crossed, 100% not
        "status": "200",
        "ts": str(now.timestamp()),
    }
    assert store_events([(b"1-0", {k.encode(): v.encode() for k, v in fields.items()})]) == StoreOutcome(1, [])

    hook.wait_for(1)
    wait_until(lambda: len(mailoutbox) == 1, what="the alert email")
    alert = BudgetAlert.objects.get(budget=budget)
    assert alert.threshold == 50
    assert "reached 50%" in mailoutbox[0].subject
    assert json.loads(hook.requests[0]["body"])["alert_id"] == str(alert.pk)
    wait_until(lambda: AlertDelivery.objects.filter(alert=alert, ok=True).count() == 2, what="two delivery rows")

    # The same batch redelivered inserts nothing and fires nothing.
    assert store_events([(b"1-0", {k.encode(): v.encode() for k, v in fields.items()})]) == StoreOutcome(0, [])
    tasks.check_alerts.delay(str(org.pk))
    time.sleep(1)
    assert BudgetAlert.objects.filter(budget=budget).count() == 1
    assert len(hook.requests) == 1 and len(mailoutbox) == 1


@pytest.mark.django_db(transaction=True)
def test_a_500_answering_webhook_is_retried_and_logged(
    org, team, actors, clean_redis, receiver, quick_backoff, celery_worker_on_test_queue
):
    hook = receiver(statuses=(500, 503, 200))
    team_budget(actors, org, team, webhooks=[hook.url], thresholds=[50])
    spend(org, team, "5.00", at=datetime.now(UTC))
    tasks.check_alerts.delay(str(org.pk))

    hook.wait_for(3)
    alert = BudgetAlert.objects.get()
    wait_until(lambda: AlertDelivery.objects.filter(alert=alert, ok=True).exists(), what="a successful attempt")
    rows = list(AlertDelivery.objects.filter(alert=alert).order_by("attempt").values_list("attempt", "ok", "detail"))
    assert rows == [(1, False, "HTTP 500"), (2, False, "HTTP 503"), (3, True, "HTTP 200")]
    signatures = {request["headers"]["X-Gatehouse-Signature"] for request in hook.requests}
    assert len(signatures) == 1  # every attempt carries the same signed body
    time.sleep(0.5)
    assert len(hook.requests) == 3


@pytest.mark.django_db(transaction=True)
def test_a_webhook_that_keeps_failing_is_given_up_after_six_attempts(
    org, team, actors, clean_redis, receiver, quick_backoff, celery_worker_on_test_queue
):
    hook = receiver(statuses=(429, 500))
    team_budget(actors, org, team, webhooks=[hook.url], thresholds=[50])
    spend(org, team, "5.00", at=datetime.now(UTC))
    tasks.check_alerts.delay(str(org.pk))

    hook.wait_for(6)
    wait_until(lambda: AlertDelivery.objects.count() == 6, what="six delivery rows")
    time.sleep(1.0)
    assert len(hook.requests) == 6
    rows = list(AlertDelivery.objects.order_by("attempt").values_list("attempt", "ok", "detail"))
    assert rows == [(1, False, "HTTP 429")] + [(n, False, "HTTP 500") for n in range(2, 7)]

"""Budget alerts: each threshold fires once per period per budget, then goes out by email and
by signed webhook.

An alert is a BudgetAlert row, unique per (budget, period start, threshold), so two checks racing
record it once and only the one that inserted it enqueues deliveries. Every delivery attempt
leaves an AlertDelivery row for the budget page; none of them carries a secret.

What a check reads: the hourly rollups (budgets/spend.py `rollup_spends`), which ingestion
updates in the statement that inserts the ledger rows, so they hold the ledger's money exactly
and are visible the moment it is. One query sums every budget of the org, one more reads the
thresholds already recorded: a check costs the same whatever the size of the ledger.

When a check runs, for each org (setting GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS, the
interval, 10 s by default):
- After an ingestion batch commits spend of an org that had no check in the last interval, a
  check is enqueued at once (the leading check).
- A batch that commits while a check is due later than now (by more than CLOCK_MARGIN_MS)
  needs nothing: that check reads after the commit, so it sees the batch.
- A batch that commits after the last check started (it may not have seen the batch) and
  within the interval after it schedules one check for the end of that interval (the trailing
  check), unless one is scheduled already (the case above).
So checks of an org are at least one interval apart, however many batches arrive, and every
batch is read by a check that starts at most one interval after the batch committed: no
threshold crossing goes unnoticed for longer than the interval plus the queue's delay. The
schedule lives in one Redis key per org, changed by one Lua script on Redis's clock. If that key
is lost, or a check task is lost or could not be enqueued, the next batch schedules again and
the periodic check of every org (the "check-budget-alerts" beat entry) covers the rest.
"""

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.utils.crypto import salted_hmac

from fleet.redis_client import redis_client, redis_keys
from keys.upstream_urls import check_upstream_url
from orgs.models import Organization

from .models import AlertDelivery, Budget, BudgetAlert
from .spend import period_range, rollup_spends

log = logging.getLogger("budgets.alerts")

# A total budget never resets; its alerts all belong to one period that starts here.
TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)
WEBHOOK_EVENT = "budget.threshold"
WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_MAX_ATTEMPTS = 6


# Checking ---------------------------------------------------------------------------------


def alert_period_start(budget: Budget, now: datetime) -> datetime:
    start, _end = period_range(budget.period, now)
    return start or TOTAL_PERIOD_START


def crossed_thresholds(budget: Budget, spend: Decimal) -> list[int]:
    return [t for t in sorted(budget.thresholds) if spend >= budget.amount * Decimal(t) / 100]


def check_budget_alerts(org_id, now: datetime | None = None) -> list[BudgetAlert]:
    """Record every threshold crossed this period that was not yet recorded, and enqueue its
    deliveries once the record commits. Returns the alerts this call recorded."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    budgets = list(Budget.objects.filter(org_id=org_id).select_related("org", "team", "key"))
    spends = rollup_spends(budgets, now)
    crossed = {}
    for budget in budgets:
        if thresholds := crossed_thresholds(budget, spends[budget.pk]):
            crossed[budget.pk] = (budget, alert_period_start(budget, now), thresholds)
    if not crossed:
        return []
    recorded = set(
        BudgetAlert.objects.filter(
            budget_id__in=crossed, period_start__in={period_start for _, period_start, _ in crossed.values()}
        ).values_list("budget_id", "period_start", "threshold")
    )
    fired = []
    for budget, period_start, thresholds in crossed.values():
        for threshold in thresholds:
            if (budget.pk, period_start, threshold) in recorded:
                continue
            with transaction.atomic():
                # get_or_create inserts in a savepoint and reads the winner's row on IntegrityError,
                # so a concurrent check that got there first makes this one a no-op.
                alert, created = BudgetAlert.objects.get_or_create(
                    budget=budget,
                    period_start=period_start,
                    threshold=threshold,
                    defaults={"spend": spends[budget.pk], "fired_at": now},
                )
                if created:
                    _enqueue_deliveries(alert)
                    fired.append(alert)
    return fired


def _enqueue_deliveries(alert: BudgetAlert) -> None:
    from . import tasks  # the tasks import this module

    budget = alert.budget
    if budget.emails:
        tasks.send_alert_email.delay_on_commit(str(alert.pk))
    for url in budget.webhooks:
        tasks.deliver_webhook.delay_on_commit(str(alert.pk), url, 1)


# Scheduling -------------------------------------------------------------------------------

# A check scheduled for less than this after now is not counted on to see a batch committed
# now: the worker's clock, which decides when it runs, may be a little ahead of the others.
CLOCK_MARGIN_MS = 200

# KEYS[1]: the org's schedule, the time (ms, Redis's clock) of its latest check, present until
# one interval after it. ARGV: the interval and the clock margin in ms. Returns in how many ms a
# check must run for a batch that committed just now, or -1 when the scheduled one will see it.
SCHEDULE_CHECK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local interval, margin = tonumber(ARGV[1]), tonumber(ARGV[2])
local due = tonumber(redis.call('GET', KEYS[1]))
if due == nil then
    redis.call('SET', KEYS[1], string.format('%d', now), 'PX', interval)
    return 0
end
if due > now + margin then
    return -1
end
local at = math.max(due + interval, now)
redis.call('SET', KEYS[1], string.format('%d', at), 'PX', string.format('%d', at - now + interval))
return at - now
"""


def check_interval_seconds() -> float:
    return float(settings.GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS)


def _schedule_key(org_id) -> str:
    return f"{redis_keys().prefix}:budget-alert-due:{org_id}"


def request_alert_checks(org_ids) -> dict[str, float]:
    """Schedule a check for each org that spent in a batch just committed, by the rule in the
    module docstring; returns {org id: seconds until its check} for the checks enqueued."""
    from . import tasks

    ids = sorted({str(org_id) for org_id in org_ids})
    if not ids:
        return {}
    interval_ms = max(1, round(check_interval_seconds() * 1000))
    client = redis_client()
    script = client.register_script(SCHEDULE_CHECK)
    with client.pipeline(transaction=False) as pipe:
        for org_id in ids:
            script(keys=[_schedule_key(org_id)], args=[interval_ms, CLOCK_MARGIN_MS], client=pipe)
        delays = pipe.execute()
    due = {org_id: int(delay) / 1000 for org_id, delay in zip(ids, delays, strict=True) if int(delay) >= 0}
    at_once = [org_id for org_id, seconds in due.items() if seconds == 0]
    if at_once:
        tasks.check_alerts.delay(*at_once)
    for org_id, seconds in due.items():
        if seconds > 0:
            tasks.check_alerts.apply_async(args=(org_id,), countdown=seconds)
    return due


def request_alert_checks_on_commit(org_ids) -> None:
    # robust: a broker hiccup must not fail ingestion after its rows committed; the periodic
    # check of every org picks up what this one missed.
    ids = list(org_ids)

    def check_alerts_after_commit() -> None:  # named: Django logs a robust hook's failure by __qualname__
        request_alert_checks(ids)

    transaction.on_commit(check_alerts_after_commit, robust=True)


def orgs_with_budgets() -> list[str]:
    return [str(pk) for pk in Budget.objects.values_list("org_id", flat=True).distinct().order_by()]


# Describing -------------------------------------------------------------------------------


def scope_label(budget: Budget) -> str:
    if budget.scope == Budget.Scope.TEAM and budget.team is not None:
        return f"team {budget.team.name}"
    if budget.scope == Budget.Scope.KEY and budget.key is not None:
        return f"key {budget.key.name} ({budget.key.prefix}…)"
    return f"organization {budget.org.name}"


def alert_period(alert: BudgetAlert) -> tuple[datetime | None, datetime | None]:
    if alert.budget.period == Budget.Period.TOTAL:
        return None, None
    return period_range(alert.budget.period, alert.period_start)


def _load_alert(alert_id) -> BudgetAlert | None:
    return BudgetAlert.objects.select_related("budget__org", "budget__team", "budget__key").filter(pk=alert_id).first()


def _claim(channel: str, alert_id, target: str) -> bool:
    """Hold, for the current transaction, the right to deliver this alert to this target: a copy
    of the task running at the same moment (a redelivery) backs off instead of sending twice."""
    digest = hashlib.sha256(f"budget-alert:{channel}:{alert_id}:{target}".encode()).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [int.from_bytes(digest[:8], "big", signed=True)])
        return bool(cursor.fetchone()[0])


def _delivered(alert: BudgetAlert, channel: str, target: str) -> bool:
    return AlertDelivery.objects.filter(alert=alert, channel=channel, target=target, ok=True).exists()


# Email ------------------------------------------------------------------------------------


def render_alert_email(alert: BudgetAlert) -> tuple[str, str]:
    """(subject, body): the template's first line is the subject."""
    budget = alert.budget
    _start, end = alert_period(alert)
    text = render_to_string(
        "budgets/email/alert.txt",
        {
            "alert": alert,
            "budget": budget,
            "org": budget.org,
            "scope": scope_label(budget),
            "period_name": budget.get_period_display().lower(),
            "period_end": end,
            "spend": alert.spend.quantize(Decimal("0.01")),
            "amount": budget.amount,
        },
    ).lstrip("\n")
    subject, _, body = text.partition("\n")
    return " ".join(subject.split()), body.lstrip("\n")


def deliver_alert_email(alert_id, attempt: int = 1) -> bool:
    """Email the alert to every address on the budget; True once it went (now or before).
    A mail error is logged as a failed attempt and raised again for the task to retry."""
    with transaction.atomic():
        alert = _load_alert(alert_id)
        if alert is None or not alert.budget.emails:
            return False
        target = ", ".join(alert.budget.emails)[:500]
        if not _claim("email", alert.pk, target) or _delivered(alert, "email", target):
            return True
        subject, body = render_alert_email(alert)
        failure: OSError | None = None
        try:
            send_mail(subject=subject, message=body, from_email=None, recipient_list=list(alert.budget.emails))
        except OSError as error:  # smtplib's errors are OSErrors
            failure = error
            detail = f"mail not sent: {type(error).__name__}"
        else:
            detail = f"sent to {len(alert.budget.emails)} address(es)"
        AlertDelivery.objects.create(
            alert=alert, channel="email", target=target, attempt=attempt, ok=failure is None, detail=detail
        )
    if failure is not None:
        raise failure
    return True


# Webhooks ---------------------------------------------------------------------------------


def webhook_secret(org: Organization) -> str:
    """The org's key for verifying webhook signatures (derived from SECRET_KEY, never stored)."""
    return salted_hmac("gatehouse.budget-webhook", str(org.pk)).hexdigest()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(alert: BudgetAlert) -> bytes:
    budget = alert.budget
    start, end = alert_period(alert)
    payload = {
        "event": WEBHOOK_EVENT,
        "alert_id": str(alert.pk),
        "fired_at": alert.fired_at.astimezone(UTC).isoformat(),
        "budget": {
            "id": str(budget.pk),
            "name": budget.name,
            "scope": budget.scope,
            "team_id": str(budget.team_id) if budget.team_id else None,
            "key_id": str(budget.key_id) if budget.key_id else None,
            "period": budget.period,
            "hard": budget.hard,
            "amount": str(budget.amount),
        },
        "org": {"id": str(budget.org_id), "slug": budget.org.slug},
        "threshold": alert.threshold,
        "spend": str(alert.spend),
        "amount": str(budget.amount),
        "period_start": start.isoformat() if start else None,
        "period_end": end.isoformat() if end else None,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class WebhookOutcome:
    ok: bool
    retry: bool  # a transient failure (network, 429, 5xx): worth another attempt
    detail: str


def post_webhook(url: str, body: bytes, headers: dict[str, str]) -> WebhookOutcome:
    try:
        with httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        return WebhookOutcome(False, True, f"timed out after {WEBHOOK_TIMEOUT_SECONDS:g} s")
    except httpx.ConnectError:
        return WebhookOutcome(False, True, "could not connect")
    except httpx.TransportError as error:
        return WebhookOutcome(False, True, f"network error ({type(error).__name__})")
    status = response.status_code
    if 200 <= status < 300:
        return WebhookOutcome(True, False, f"HTTP {status}")
    if 300 <= status < 400:
        return WebhookOutcome(False, False, f"HTTP {status}: redirects are not followed")
    return WebhookOutcome(False, status == 429 or status >= 500, f"HTTP {status}")


def deliver_alert_webhook(alert_id, url: str, attempt: int = 1) -> WebhookOutcome:
    """POST the signed alert to one of the budget's webhooks and log the attempt."""
    with transaction.atomic():
        alert = _load_alert(alert_id)
        if alert is None or url not in alert.budget.webhooks:
            # Deleted, or the URL was removed from the budget since: nothing to deliver.
            return WebhookOutcome(False, False, "no longer wanted")
        if not _claim("webhook", alert.pk, url) or _delivered(alert, "webhook", url):
            return WebhookOutcome(True, False, "already delivered")
        try:
            # Checked again at send time: the host may resolve elsewhere than when it was saved.
            check_upstream_url(url, field="webhook")
        except ValidationError as error:
            outcome = WebhookOutcome(False, False, "refused: " + " ".join(error.messages))
        else:
            body = webhook_body(alert)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "Gatehouse-Webhooks/1",
                "X-Gatehouse-Event": WEBHOOK_EVENT,
                "X-Gatehouse-Delivery": f"{alert.pk}.{attempt}",
                "X-Gatehouse-Signature": sign(body, webhook_secret(alert.budget.org)),
            }
            outcome = post_webhook(url, body, headers)
        AlertDelivery.objects.create(
            alert=alert,
            channel="webhook",
            target=url[:500],
            attempt=attempt,
            ok=outcome.ok,
            detail=outcome.detail[:500],
        )
    if not outcome.ok:
        log.warning("budget alert %s webhook attempt %d failed: %s", alert_id, attempt, outcome.detail)
    return outcome

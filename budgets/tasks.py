"""Budget alerts and counter reconciliation, run by Celery. Each task is named, takes ids, calls
one function of budgets.alerts or budgets.reconcile, and is harmless when it runs twice."""

import logging

import redis
from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import alerts, reconcile

log = logging.getLogger("budgets.tasks")

DATABASE_ERRORS = (OperationalError, InterfaceError)
WEBHOOK_BACKOFF_CAP_SECONDS = 300


def webhook_backoff(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: 2, 4, 8, 16, 32, ... up to the cap."""
    return min(2.0**attempt, WEBHOOK_BACKOFF_CAP_SECONDS)


@shared_task(
    name="budgets.check_alerts",
    ignore_result=True,
    autoretry_for=(*DATABASE_ERRORS, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=5,
)
def check_alerts(*org_ids: str) -> None:
    """Fire the thresholds crossed by these orgs' budgets; with no ids, of every org that has one
    (the periodic sweep). Ingestion enqueues it at most once per org per check interval."""
    for org_id in org_ids or alerts.orgs_with_budgets():
        alerts.check_budget_alerts(org_id)


@shared_task(
    name="budgets.send_alert_email",
    bind=True,
    ignore_result=True,
    autoretry_for=(ConnectionError, TimeoutError, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=5,
)
def send_alert_email(self, alert_id: str) -> None:
    """Email an alert to the budget's addresses (once: a delivered alert is not sent again)."""
    alerts.deliver_alert_email(alert_id, attempt=self.request.retries + 1)


@shared_task(name="budgets.deliver_webhook", bind=True, ignore_result=True, max_retries=alerts.WEBHOOK_MAX_ATTEMPTS - 1)
def deliver_webhook(self, alert_id: str, url: str, attempt: int = 1) -> None:
    """POST an alert to one webhook; a network error, 429 or 5xx is tried again with backoff,
    up to WEBHOOK_MAX_ATTEMPTS attempts in all."""
    outcome = alerts.deliver_alert_webhook(alert_id, url, attempt)
    if not outcome.retry:
        return
    if attempt >= alerts.WEBHOOK_MAX_ATTEMPTS:
        log.warning("budget alert %s webhook given up after %d attempts: %s", alert_id, attempt, outcome.detail)
        return
    # The attempt number travels in the arguments, so a redelivered message keeps counting.
    raise self.retry(args=(alert_id, url, attempt + 1), countdown=webhook_backoff(attempt))


@shared_task(
    name="budgets.reconcile_budgets",
    ignore_result=True,
    autoretry_for=(*DATABASE_ERRORS, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=3,
)
def reconcile_budgets() -> None:
    """Raise every budget's gateway counter to the ledger's spend (periodic; idempotent)."""
    results = reconcile.reconcile_all()
    raised = [result for result in results if result.changed]
    if raised:
        log.info("raised %d of %d budget counters to the ledger's spend", len(raised), len(results))

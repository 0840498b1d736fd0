"""SLO burn-rate checks and alert deliveries, run by Celery. Each task is named, takes ids, calls
one function of sla.alerts, and is harmless when it runs twice."""

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from budgets.tasks import webhook_backoff

from . import alerts

log = logging.getLogger("sla.tasks")

DATABASE_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    name="sla.check_slo_burn",
    ignore_result=True,
    autoretry_for=DATABASE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=5,
)
def check_slo_burn(*org_ids: str) -> None:
    """Alert on the policies burning their error budget too fast; with no ids, of every org with one."""
    for org_id in org_ids or alerts.orgs_with_policies():
        alerts.check_slo_burn(org_id)


@shared_task(
    name="sla.send_burn_alert_email",
    bind=True,
    ignore_result=True,
    autoretry_for=(ConnectionError, TimeoutError, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=5,
)
def send_burn_alert_email(self, alert_id: str) -> None:
    """Email a burn alert to the policy's addresses (once: a delivered alert is not sent again)."""
    alerts.deliver_burn_email(alert_id, attempt=self.request.retries + 1)


@shared_task(
    name="sla.deliver_burn_alert_webhook", bind=True, ignore_result=True, max_retries=alerts.WEBHOOK_MAX_ATTEMPTS - 1
)
def deliver_burn_alert_webhook(self, alert_id: str, url: str, attempt: int = 1) -> None:
    """POST a burn alert to one webhook; a network error, 429 or 5xx is tried again with backoff,
    up to WEBHOOK_MAX_ATTEMPTS attempts in all."""
    outcome = alerts.deliver_burn_webhook(alert_id, url, attempt)
    if not outcome.retry:
        return
    if attempt >= alerts.WEBHOOK_MAX_ATTEMPTS:
        log.warning("SLO burn alert %s webhook given up after %d attempts: %s", alert_id, attempt, outcome.detail)
        return
    # The attempt number travels in the arguments, so a redelivered message keeps counting.
    raise self.retry(args=(alert_id, url, attempt + 1), countdown=webhook_backoff(attempt))

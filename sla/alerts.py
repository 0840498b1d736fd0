"""SLO burn-rate alerts: the multiwindow rule of the Google SRE workbook, delivered by email and
by signed webhook as budget alerts are.

For a 30-day SLO, a burn rate above 14.4 both over the last hour and over the last 6 hours
means 2% of the month's error budget went in one hour and the whole budget would be gone in
about two days. The long window keeps one bad minute from paging; the short one makes the alert
stop soon after the burning does.

No model holds these alerts: each is an audit event `sla.burn_alert` on the policy, recorded at
most once per policy per hour (an advisory lock per policy makes two concurrent checks record it
once). Every delivery attempt is an audit event `sla.burn_alert_delivery` naming the alert, the
channel and the target (a webhook by its host and a digest: its URL may carry a token), so a
redelivered task sees that it already went.
"""

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import connection, transaction
from django.template.loader import render_to_string

from audit.context import Actor
from audit.models import AuditEvent
from audit.services import record_event
from budgets.alerts import WebhookOutcome, post_webhook, sign, webhook_secret
from keys.upstream_urls import check_upstream_url
from orgs.models import Organization

from .models import SlaPolicy
from .reports import policy_burn_rates

log = logging.getLogger("sla.alerts")

ALERT_ACTION = "sla.burn_alert"
DELIVERY_ACTION = "sla.burn_alert_delivery"
MONITOR = Actor.system("slo-monitor")
BURN_WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6)}
BURN_THRESHOLD = Decimal("14.4")
ALERT_EVERY = timedelta(hours=1)
WEBHOOK_EVENT = "sla.burn_rate"
WEBHOOK_MAX_ATTEMPTS = 6


# Checking -----------------------------------------------------------------------------------


def _lock(*parts) -> bool:
    """Hold, for the current transaction, the right to act on these parts; False if another has it."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [int.from_bytes(digest[:8], "big", signed=True)])
        return bool(cursor.fetchone()[0])


def _burn(failed: int, requests: int, policy: SlaPolicy) -> Decimal | None:
    allowed = 1 - policy.slo_availability / 100
    if not requests or allowed <= 0:
        return None
    return Decimal(failed) / Decimal(requests) / allowed


def check_slo_burn(org_id, now: datetime | None = None) -> list[AuditEvent]:
    """Record a burn alert for every policy burning faster than 14.4 over both the last hour
    and the last 6 hours, unless one was recorded in the last hour; deliveries go out once the
    record commits. Returns the alerts this call recorded."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    org = Organization.objects.get(pk=org_id)
    counts = policy_burn_rates(org, now, BURN_WINDOWS)
    policies = SlaPolicy.objects.filter(org=org, pk__in=list(counts)).select_related("team")
    fired = []
    for policy in policies:
        rates = {name: _burn(*counts[policy.pk][name], policy) for name in BURN_WINDOWS}
        if not all(rate is not None and rate > BURN_THRESHOLD for rate in rates.values()):
            continue
        with transaction.atomic():
            if not _lock("sla-burn-alert", policy.pk):
                continue  # another check is recording this very alert
            recent = AuditEvent.objects.filter(
                org=org, action=ALERT_ACTION, target_id=str(policy.pk), created_at__gte=now - ALERT_EVERY
            )
            if recent.exists():
                continue
            event = record_event(
                actor=MONITOR,
                org=org,
                action=ALERT_ACTION,
                target=policy,
                target_type="slapolicy",
                diff={
                    "fired_at": now.isoformat(),
                    "slo_availability": str(policy.slo_availability),
                    "threshold": str(BURN_THRESHOLD),
                    "windows": {
                        name: {
                            "failed": counts[policy.pk][name][0],
                            "requests": counts[policy.pk][name][1],
                            "burn_rate": str(rates[name].quantize(Decimal("0.01"))),
                        }
                        for name in BURN_WINDOWS
                    },
                },
            )
            _enqueue_deliveries(event, policy)
            fired.append(event)
    return fired


def _enqueue_deliveries(event: AuditEvent, policy: SlaPolicy) -> None:
    from . import tasks  # the tasks import this module

    if policy.alert_emails:
        tasks.send_burn_alert_email.delay_on_commit(str(event.uuid))
    for url in policy.alert_webhooks:
        tasks.deliver_burn_alert_webhook.delay_on_commit(str(event.uuid), url, 1)


def orgs_with_policies() -> list[str]:
    return [str(pk) for pk in SlaPolicy.objects.values_list("org_id", flat=True).distinct().order_by()]


# Delivering -----------------------------------------------------------------------------------


def _load(alert_id) -> tuple[AuditEvent, SlaPolicy] | None:
    """The alert and its policy as it is now (addresses may have changed since it fired)."""
    event = AuditEvent.objects.filter(uuid=alert_id, action=ALERT_ACTION).select_related("org").first()
    if event is None:
        return None
    policy = SlaPolicy.objects.filter(pk=event.target_id, org_id=event.org_id).select_related("org", "team").first()
    return None if policy is None else (event, policy)


def _target_of(channel: str, target: str) -> dict:
    digest = hashlib.sha256(target.encode()).hexdigest()[:16]
    shown = urlsplit(target).hostname or "" if channel == "webhook" else target[:500]
    return {"target": shown, "target_digest": digest}


def _delivered(event: AuditEvent, channel: str, target: str) -> bool:
    return AuditEvent.objects.filter(
        org_id=event.org_id,
        action=DELIVERY_ACTION,
        diff__alert_id=str(event.uuid),
        diff__channel=channel,
        diff__target_digest=_target_of(channel, target)["target_digest"],
        diff__ok=True,
    ).exists()


def _log_delivery(event, policy, channel: str, target: str, attempt: int, ok: bool, detail: str) -> None:
    record_event(
        actor=MONITOR,
        org=event.org,
        action=DELIVERY_ACTION,
        target=policy,
        target_type="slapolicy",
        diff={
            "alert_id": str(event.uuid),
            "channel": channel,
            **_target_of(channel, target),
            "attempt": attempt,
            "ok": ok,
            "detail": detail[:500],
        },
    )


def render_burn_email(event: AuditEvent, policy: SlaPolicy) -> tuple[str, str]:
    """(subject, body): the template's first line is the subject."""
    text = render_to_string(
        "sla/email/slo_alert.txt",
        {
            "org": event.org,
            "policy": policy,
            "fired_at": event.created_at.astimezone(UTC),
            "windows": event.diff["windows"],
            "threshold": event.diff["threshold"],
            "slo_availability": event.diff["slo_availability"],
        },
    ).lstrip("\n")
    subject, _, body = text.partition("\n")
    return " ".join(subject.split()), body.lstrip("\n")


def deliver_burn_email(alert_id, attempt: int = 1) -> bool:
    """Email the alert to the policy's addresses; True once it went (now or before). A mail error
    is logged as a failed attempt and raised again for the task to retry."""
    with transaction.atomic():
        loaded = _load(alert_id)
        if loaded is None or not loaded[1].alert_emails:
            return False
        event, policy = loaded
        target = ", ".join(policy.alert_emails)
        if not _lock("sla-burn-email", event.uuid, target) or _delivered(event, "email", target):
            return True
        subject, body = render_burn_email(event, policy)
        failure: OSError | None = None
        try:
            send_mail(subject=subject, message=body, from_email=None, recipient_list=list(policy.alert_emails))
        except OSError as error:  # smtplib's errors are OSErrors
            failure = error
            detail = f"mail not sent: {type(error).__name__}"
        else:
            detail = f"sent to {len(policy.alert_emails)} address(es)"
        _log_delivery(event, policy, "email", target, attempt, failure is None, detail)
    if failure is not None:
        raise failure
    return True


def webhook_body(event: AuditEvent, policy: SlaPolicy) -> bytes:
    payload = {
        "event": WEBHOOK_EVENT,
        "alert_id": str(event.uuid),
        "fired_at": event.created_at.astimezone(UTC).isoformat(),
        "org": {"id": str(policy.org_id), "slug": policy.org.slug},
        "policy": {
            "id": str(policy.pk),
            "name": policy.name,
            "team_id": str(policy.team_id) if policy.team_id else None,
            "slo_availability": event.diff["slo_availability"],
            "slo_window_days": policy.slo_window_days,
        },
        "threshold": event.diff["threshold"],
        "windows": event.diff["windows"],
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def deliver_burn_webhook(alert_id, url: str, attempt: int = 1) -> WebhookOutcome:
    """POST the signed alert to one of the policy's webhooks and log the attempt."""
    with transaction.atomic():
        loaded = _load(alert_id)
        if loaded is None or url not in loaded[1].alert_webhooks:
            return WebhookOutcome(False, False, "no longer wanted")
        event, policy = loaded
        if not _lock("sla-burn-webhook", event.uuid, url) or _delivered(event, "webhook", url):
            return WebhookOutcome(True, False, "already delivered")
        try:
            # Checked again at send time: the host may resolve elsewhere than when it was saved.
            check_upstream_url(url, field="webhook")
        except ValidationError as error:
            outcome = WebhookOutcome(False, False, "refused: " + " ".join(error.messages))
        else:
            body = webhook_body(event, policy)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "Gatehouse-Webhooks/1",
                "X-Gatehouse-Event": WEBHOOK_EVENT,
                "X-Gatehouse-Delivery": f"{event.uuid}.{attempt}",
                "X-Gatehouse-Signature": sign(body, webhook_secret(policy.org)),
            }
            outcome = post_webhook(url, body, headers)
        _log_delivery(event, policy, "webhook", url, attempt, outcome.ok, outcome.detail)
    if not outcome.ok:
        log.warning("SLO burn alert %s webhook attempt %d failed: %s", alert_id, attempt, outcome.detail)
    return outcome

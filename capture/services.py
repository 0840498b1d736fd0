"""Content capture: the settings, reading captured content (audited) and the retention purge."""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from audit.context import Actor
from audit.services import changes, record_event
from fleet.changes import record_config_change
from gateway.capture import Captured
from gateway.config import MAX_CAPTURE_BYTES
from orgs.models import Organization, Team

from . import partitions, redact
from .keys import ensure_keys, open_keys
from .models import CapturedContent
from .store import open_stored

log = logging.getLogger("capture")
MIN_CAPTURE_BYTES = 256
TEAM_CHOICES = ("inherit", "on", "off")


def max_retention_days() -> int:
    return settings.GATEHOUSE_CAPTURE_MAX_RETENTION_DAYS


def _check(max_bytes, retention_days, patterns) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    whole = isinstance(max_bytes, int) and not isinstance(max_bytes, bool)
    if not whole or not MIN_CAPTURE_BYTES <= max_bytes <= MAX_CAPTURE_BYTES:
        errors["max_bytes"] = [f"Use a whole number of bytes from {MIN_CAPTURE_BYTES:,} to {MAX_CAPTURE_BYTES:,}."]
    longest = max_retention_days()
    if isinstance(retention_days, bool) or not isinstance(retention_days, int) or not 1 <= retention_days <= longest:
        errors["retention_days"] = [f"Use a whole number of days from 1 to {longest}."]
    if len(patterns) > redact.MAX_PATTERNS:
        errors["redact_patterns"] = [f"At most {redact.MAX_PATTERNS} patterns."]
    else:
        problems = [f"{pattern[:40]!r}: {why}" for pattern in patterns if (why := redact.check_pattern(pattern))]
        if problems:
            errors["redact_patterns"] = problems
    return errors


@transaction.atomic
def update_capture_settings(
    *, actor: Actor, org: Organization, enabled: bool, max_bytes: int, retention_days: int, redact_patterns: list[str]
) -> Organization:
    """Change the org's capture settings; one audit event, and every team's config follows.
    Turning capture on the first time makes the org's capture keys."""
    patterns = [pattern for pattern in (p.strip() for p in redact_patterns) if pattern]
    errors = _check(max_bytes, retention_days, patterns)
    if errors:
        raise ValidationError(errors)
    org = Organization.objects.select_for_update().get(pk=org.pk)
    before = {
        "capture_enabled": org.capture_enabled,
        "capture_max_bytes": org.capture_max_bytes,
        "capture_retention_days": org.capture_retention_days,
        "capture_redact_patterns": list(org.capture_redact_patterns),
    }
    after = {
        "capture_enabled": enabled,
        "capture_max_bytes": max_bytes,
        "capture_retention_days": retention_days,
        "capture_redact_patterns": patterns,
    }
    diff = changes(before, after)
    if not diff:
        return org
    for field, value in after.items():
        setattr(org, field, value)
    fields = list(after)
    if enabled or Team.objects.filter(org=org, capture="on").exists():
        keys = ensure_keys(org)
        if bytes(org.capture_public_key) != bytes(keys.public_key):
            org.capture_public_key = bytes(keys.public_key)
            fields.append("capture_public_key")
    org.save(update_fields=fields)
    event = record_event(actor=actor, org=org, action="org.capture_changed", target=org, diff=diff)
    record_config_change("org", org.pk, cause=event)
    record_config_change("team", *Team.objects.filter(org=org).values_list("pk", flat=True), cause=event)
    return org


@transaction.atomic
def set_team_capture(*, actor: Actor, team: Team, capture: str) -> Team:
    """A team's own capture setting: "inherit" (its org's), "on" or "off"."""
    if capture not in TEAM_CHOICES:
        raise ValidationError({"capture": ["Choose as the org, on or off."]})
    team = Team.objects.select_for_update().select_related("org").get(pk=team.pk)
    if team.capture == capture:
        return team
    before = team.capture
    team.capture = capture
    team.save(update_fields=["capture"])
    diff = changes({"capture": before}, {"capture": capture})
    event = record_event(actor=actor, org=team.org, action="team.capture_changed", target=team, diff=diff)
    if capture == "on" and not bytes(team.org.capture_public_key):
        org = Organization.objects.select_for_update().get(pk=team.org_id)  # one maker of the org's keys
        if not bytes(org.capture_public_key):
            org.capture_public_key = bytes(ensure_keys(org).public_key)
            org.save(update_fields=["capture_public_key"])
            record_config_change("org", org.pk, cause=event)
    record_config_change("team", team.pk, cause=event)
    return team


# Reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:  # vars() of it is the API's answer (requestlog/api.py)
    prompt: str
    answer: str
    prompt_cut: bool
    answer_cut: bool
    redactions: int


def has_content(org, request_id: str) -> bool:
    return CapturedContent.objects.filter(org=org, request_id=request_id).exists()


@transaction.atomic
def read_content(*, actor: Actor, org: Organization, request_id: str) -> Content | None:
    """The request's captured content, opened; None when there is none. Every read is an
    audit event ("request.content_viewed"), written before the content is returned. The caller
    has checked that the actor may see the request (requestlog/queries.py)."""
    row = CapturedContent.objects.filter(org=org, request_id=request_id).first()
    if row is None:
        return None
    keys = open_keys(str(org.pk))
    if keys is None:  # the keys went with the org; nothing else removes them
        return None
    opened: Captured = open_stored(keys, request_id, row.sealed)
    record_event(
        actor=actor,
        org=org,
        action="request.content_viewed",
        target_type="request",
        target_id=request_id,
        target_label=f"request {request_id}",
    )
    return Content(
        opened.prompt.decode("utf-8", "replace"),
        opened.answer.decode("utf-8", "replace"),
        row.prompt_cut,
        row.answer_cut,
        row.redactions,
    )


# Retention -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    dropped_days: int
    deleted_rows: int


def purge_expired(now=None) -> PurgeResult:
    """Drop the days no org keeps any more, and delete the rows of orgs that keep fewer days
    than the longest keeper from the days still held. Days ahead are made in advance, so
    ingestion rarely makes one itself."""
    now = now or timezone.now()
    longest = Organization.objects.aggregate(days=Max("capture_retention_days"))["days"] or 0
    longest = min(longest, max_retention_days())
    today = partitions.day_of(now)
    oldest_kept = partitions.day_of(now - timedelta(days=longest))  # a day wholly older goes
    dropped = 0
    with transaction.atomic():
        for day in partitions.existing():
            if day < oldest_kept:
                partitions.drop(day)
                dropped += 1
        partitions.ensure({today, today + timedelta(days=1)})
    deleted = 0
    shorter = Organization.objects.filter(capture_retention_days__lt=longest)
    shorter = shorter.values_list("pk", "capture_retention_days")
    with connection.cursor() as cursor:
        for org_id, days in shorter:
            cursor.execute(
                "DELETE FROM capture_capturedcontent WHERE org_id = %s AND occurred_at < %s",
                [org_id, now - timedelta(days=days)],
            )
            deleted += max(cursor.rowcount, 0)
    if dropped or deleted:
        log.info("captured content purged: %d days dropped, %d rows deleted", dropped, deleted)
    return PurgeResult(dropped, deleted)

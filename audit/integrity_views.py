"""The integrity page: the last verification, the signed checkpoints, the retention; and the
verify button."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from orgs.access import get_org_access

from .integrity import signature_coverage, signing_public_key_text, verify_and_record
from .models import AuditChainHead, AuditCheckpoint, AuditEvent

CHECKPOINTS_SHOWN = 20


@login_required
def integrity(request, org_slug):
    access = get_org_access(request, org_slug, "audit.read")
    org = access.org
    last_verification = (
        AuditEvent.objects.filter(org=org, action="audit.verified")
        .order_by("-sequence")
        .only("created_at", "actor_label", "diff")
        .first()
    )
    result = None
    if last_verification is not None:
        result = {name: (change or {}).get("after") for name, change in last_verification.diff.items()}
    checkpoints = list(
        AuditCheckpoint.objects.filter(org=org)
        .defer("event_hashes")
        .order_by("-sequence", "-created_at")[:CHECKPOINTS_SHOWN]
    )
    context = {
        "section": "audit",
        "last_verification": last_verification,
        "result": result,
        "head": AuditChainHead.objects.filter(chain=str(org.pk)).first(),
        "checkpoints": checkpoints,
        **signature_coverage(org),
        "checkpoint_seconds": settings.CELERY_BEAT_SCHEDULE["sign-audit-checkpoints"]["schedule"],
        "checkpoint_events": settings.GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS,
        "purges": list(AuditCheckpoint.objects.filter(org=org, kind=AuditCheckpoint.PURGE).order_by("-sequence")[:5]),
        "retention_days": org.audit_retention_days,
        "public_key": signing_public_key_text(),
    }
    return render(request, "audit/integrity.html", context)


@login_required
@require_POST
def verify(request, org_slug):
    access = get_org_access(request, org_slug, "audit.read")
    result = verify_and_record(actor=access.actor, org=access.org)
    if result.ok:
        messages.success(request, f"The audit chain verified: {result.checked} events checked. {result.coverage}")
    else:
        messages.error(
            request,
            f"The audit chain is broken at sequence {result.first_bad_sequence}: {result.reason}. {result.coverage}",
        )
    return redirect("audit:integrity", org_slug=access.org.slug)

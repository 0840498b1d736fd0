"""The audit trail pages: one org's events, newest first, filtered and in keyset pages, and one
event with its changes."""

import json
from dataclasses import dataclass

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from budgets.models import Budget
from keys.models import CallerKey, ProviderCredential
from orgs.access import get_org_access
from orgs.models import ApiToken, Invitation, Membership, Team
from sla.models import Deployment, ModelRoute, SlaPolicy

from .filters import filter_events
from .forms import AuditFilterForm, AuditPageForm
from .models import AuditEvent

PAGE_SIZE = 50


def _shown(value) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def diff_rows(diff) -> list[tuple[str, str, str]]:
    """(field, before, after) rows of an event's diff, for a small table."""
    if not isinstance(diff, dict):
        return [("", "", _shown(diff))]
    rows = []
    for field, change in diff.items():
        if isinstance(change, dict) and change and set(change) <= {"before", "after"}:
            rows.append((field, _shown(change.get("before")), _shown(change.get("after"))))
        else:
            rows.append((field, "", _shown(change)))
    return rows


@dataclass(frozen=True)
class KeysetPage:
    """Up to PAGE_SIZE events, newest first, and the sequences the Older/Newer links start from."""

    events: list
    older_than: int | None  # ?before= of the next older page, if there is one
    newer_than: int | None  # ?after= of the next newer page, if there is one
    cursor: bool  # the page starts somewhere other than the newest event


def keyset_page(events, before: int | None, after: int | None) -> KeysetPage:
    """One page by sequence, never by OFFSET: two LIMITed index scans however deep the page is."""
    if after is not None:
        rows = list(events.filter(sequence__gt=after).order_by("sequence")[: PAGE_SIZE + 1])
        has_newer = len(rows) > PAGE_SIZE
        page = rows[:PAGE_SIZE][::-1]
        bottom = page[-1].sequence if page else after + 1
        has_older = events.filter(sequence__lt=bottom).exists()
    else:
        events_below = events.filter(sequence__lt=before) if before is not None else events
        rows = list(events_below.order_by("-sequence")[: PAGE_SIZE + 1])
        has_older = len(rows) > PAGE_SIZE
        page = rows[:PAGE_SIZE]
        has_newer = False
        if before is not None:
            top = page[0].sequence if page else before - 1
            has_newer = events.filter(sequence__gt=top).exists()
    return KeysetPage(
        events=page,
        older_than=page[-1].sequence if has_older and page else None,
        newer_than=page[0].sequence if has_newer and page else None,
        cursor=before is not None or after is not None,
    )


@login_required
def event_list(request, org_slug):
    access = get_org_access(request, org_slug, "audit.read")
    filters = AuditFilterForm(request.GET)
    cursor = AuditPageForm(request.GET)
    valid = filters.is_valid() & cursor.is_valid()
    page = KeysetPage(events=[], older_than=None, newer_than=None, cursor=False)
    if valid:
        events = filter_events(AuditEvent.objects.filter(org=access.org), filters.cleaned_data)
        page = keyset_page(events, cursor.cleaned_data.get("before"), cursor.cleaned_data.get("after"))
        for event in page.events:
            event.diff_rows = diff_rows(event.diff)
    context = {
        "section": "audit",
        "page": page,
        "filters": filters,
        "cursor": cursor,
        "filtered": filters.filtered,
        "any_filter": any(request.GET.get(name) for name in filters.fields),
    }
    return render(request, "audit/event_list.html", context, status=200 if valid else 400)


# target_type -> (model, lookup field, URL name, URL kwarg or None for a list page)
TARGET_PAGES = {
    "team": (Team, "pk", "orgs:team_detail", "team_id"),
    "caller_key": (CallerKey, "pk", "keys:detail", "key_id"),
    "provider_credential": (ProviderCredential, "pk", "keys:credential_detail", "credential_id"),
    "deployment": (Deployment, "pk", "sla:deployment_detail", "deployment_id"),
    "modelroute": (ModelRoute, "pk", "sla:route_detail", "route_id"),
    "slapolicy": (SlaPolicy, "pk", "sla:policy_detail", "policy_id"),
    "budget": (Budget, "pk", "budgets:budget_detail", "budget_id"),
    "member": (Membership, "user__uuid", "orgs:member_list", None),
    "user": (Membership, "user__uuid", "orgs:member_list", None),
    "api_token": (ApiToken, "pk", "orgs:token_list", None),
    "invitation": (Invitation, "pk", "orgs:invitation_list", None),
}


def target_url(event: AuditEvent, org) -> str | None:
    """The page of the event's target while it still exists in the org, else None."""
    if event.target_type == "organization" and event.target_id == str(org.pk):
        return reverse("orgs:dashboard", kwargs={"org_slug": org.slug})
    if event.target_type not in TARGET_PAGES or not event.target_id:
        return None
    model, lookup, url_name, kwarg = TARGET_PAGES[event.target_type]
    try:
        exists = model.objects.filter(org=org, **{lookup: event.target_id}).exists()
    except (ValueError, ValidationError):  # an id that is not a UUID names nothing
        return None
    if not exists:
        return None
    kwargs = {"org_slug": org.slug}
    if kwarg:
        kwargs[kwarg] = event.target_id
    return reverse(url_name, kwargs=kwargs)


@login_required
def event_detail(request, org_slug, event_uuid):
    access = get_org_access(request, org_slug, "audit.read")
    event = get_object_or_404(AuditEvent, org=access.org, uuid=event_uuid)
    context = {
        "section": "audit",
        "event": event,
        "diff_rows": diff_rows(event.diff) if event.diff else [],
        "target_url": target_url(event, access.org),
    }
    return render(request, "audit/event_detail.html", context)

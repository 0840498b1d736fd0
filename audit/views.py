"""The audit trail page: one org's events, newest first."""

import json

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from orgs.access import get_org_access

from .models import AuditEvent

PAGE_SIZE = 25


class AuditFilterForm(forms.Form):
    action = forms.CharField(
        label="Action",
        max_length=64,
        required=False,
        help_text="An action or its start, e.g. team. or member.role_changed",
    )
    actor = forms.CharField(label="Actor", max_length=254, required=False, help_text="Part of an email or token name")
    target = forms.CharField(
        label="Target id", max_length=64, required=False, help_text="The id of one object, for its history"
    )


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


@login_required
def event_list(request, org_slug):
    access = get_org_access(request, org_slug, "audit.read")
    filters = AuditFilterForm(request.GET)
    events = AuditEvent.objects.filter(org=access.org).order_by("-sequence")
    if filters.is_valid():
        if filters.cleaned_data["action"]:
            events = events.filter(action__startswith=filters.cleaned_data["action"])
        if filters.cleaned_data["actor"]:
            events = events.filter(actor_label__icontains=filters.cleaned_data["actor"])
        if filters.cleaned_data["target"]:
            events = events.filter(target_id=filters.cleaned_data["target"])
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    for event in page:
        event.diff_rows = diff_rows(event.diff)
    filtered = bool(request.GET.get("action") or request.GET.get("actor"))
    context = {"section": "audit", "page": page, "filters": filters, "filtered": filtered}
    return render(request, "audit/event_list.html", context)

"""The request log pages: an org's gateway requests, filtered and in keyset pages; one request
with its attempts; exports of what the filters select.

Each page starts with the org access check (orgs/access.py), then narrows the ledger to what
this person may read (requestlog/queries.py): 404 for outsiders and for requests out of reach,
403 for roles that may read none.
"""

from datetime import datetime

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import HttpResponseNotAllowed
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from budgets.charts import format_usd
from capture import services as capture_services
from keys.forms import person_label
from keys.models import CallerKey
from orgs.access import get_org_access, visible_keys
from orgs.models import Team, User
from sla.models import Deployment, ModelRoute

from .export import EXPORT_LIMIT, FORMATS, export_response
from .forms import RequestFilterForm, RequestPageForm
from .queries import (
    STATUS_CLASSES,
    KeysetPage,
    Labeller,
    Viewer,
    client_details,
    filter_requests,
    find_request,
    keyset_page,
    sla_policy_for,
    time_window,
    viewer_for,
    visible_requests,
)

# The key list of the filter form holds at most this many keys (by name); any other key can be
# chosen from its row in the table, or by its id in the query string.
KEY_CHOICES = 500
PAGE_ONLY_PARAMETERS = ("before", "after", "format")


def filter_choices(viewer: Viewer) -> dict:
    """What the filter form offers: the keys, teams and key owners this person can see, and the
    org's models and deployments."""
    org, request, access = viewer.org, viewer.request, viewer.access
    keys = visible_keys(request, access, CallerKey.objects.filter(org=org))
    teams = Team.objects.filter(org=org)
    if not viewer.whole_org:
        teams = teams.filter(Q(pk__in=sorted(viewer.admin_team_ids)) | Q(pk__in=keys.values("team_id")))
    owners = User.objects.filter(pk__in=keys.values("user_id")).order_by("email")
    return {
        "keys": [
            (key.pk, f"{key.name} ({key.prefix}…)")
            for key in keys.order_by("name", "prefix").only("pk", "name", "prefix")[:KEY_CHOICES]
        ],
        "teams": list(teams.order_by("name").values_list("pk", "name")),
        "users": [(person.uuid, person_label(person)) for person in owners],
        "models": list(ModelRoute.objects.filter(org=org).values_list("alias", flat=True)),
        "deployments": list(Deployment.objects.filter(org=org).order_by("name").values_list("pk", "name")),
    }


def export_query(request) -> str:
    """The page's filters, for its export links."""
    query = request.GET.copy()
    for name in PAGE_ONLY_PARAMETERS:
        query.pop(name, None)
    return query.urlencode()


def status_class(status: int) -> str:
    return next((name for name, (_label, low, high) in STATUS_CLASSES.items() if low <= status < high), "")


def _render_list(request, viewer: Viewer, *, export_error: str = ""):
    filters = RequestFilterForm(request.GET)
    filters.offer(**filter_choices(viewer))
    pages = RequestPageForm(request.GET)
    valid = filters.is_valid() & pages.is_valid()
    page = KeysetPage.empty()
    window: tuple[datetime | None, datetime | None] = (None, None)
    if valid:
        now = timezone.now()
        records = filter_requests(visible_requests(viewer), filters.cleaned_data, now)
        page = keyset_page(records, before=pages.cleaned_data["before"], after=pages.cleaned_data["after"])
        Labeller(viewer).label(page.rows)
        window = time_window(filters.cleaned_data, now)
        for record in page.rows:
            record.status_class = status_class(record.status)
            record.cost_label = format_usd(record.cost_shown) if record.cost_shown is not None else None
    context = {
        "section": "requests",
        "filters": filters,
        "cursor": pages,
        "page": page,
        "since": window[0],
        "until": window[1],
        "filtered": filters.filtered,
        "any_filter": any(request.GET.get(name) for name in filters.fields),
        "show_cost": viewer.sees_any_cost,
        "export_query": export_query(request),
        "export_limit": EXPORT_LIMIT,
        "export_error": export_error,
        "can_read_deployments": viewer.access.can("routes.read"),
        "clear_url": reverse("requestlog:list", kwargs={"org_slug": viewer.org.slug}),
    }
    status = 200 if valid and not export_error else 400
    return render(request, "requestlog/request_list.html", context, status=status)


@login_required
def request_list(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    return _render_list(request, viewer_for(request, access))


@login_required
def request_detail(request, org_slug, request_id):
    return _render_detail(request, org_slug, request_id, show_content=False)


@login_required
def request_content(request, org_slug, request_id):
    """The detail page with the captured content shown: a POST, so that every view is a
    deliberate act, and each is an audit event (capture/services.py read_content)."""
    return _render_detail(request, org_slug, request_id, show_content=True)


def _render_detail(request, org_slug, request_id, *, show_content: bool):
    access = get_org_access(request, org_slug, "org.read")
    viewer = viewer_for(request, access)
    record = find_request(viewer, request_id)
    content = None
    if show_content:
        access.require("content.read")  # after the lookup: outsiders and others' requests 404
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        content = capture_services.read_content(actor=access.actor, org=access.org, request_id=record.request_id)
    Labeller(viewer).label([record])
    record.status_class = status_class(record.status)
    client_ip, user_agent = client_details(record)
    context = {
        "section": "requests",
        "record": record,
        "cost_label": format_usd(record.cost_shown) if record.cost_shown is not None else None,
        "client_ip": client_ip,
        "user_agent": user_agent,
        "policy": sla_policy_for(access.org, record.team_id),
        "can_read_deployments": access.can("routes.read"),
        "can_read_policies": access.can("sla.read"),
        "has_content": content is not None or capture_services.has_content(access.org, record.request_id),
        "can_read_content": access.can("content.read"),
        "content": content,
    }
    return render(request, "requestlog/request_detail.html", context)


@login_required
def request_export(request, org_slug):
    access = get_org_access(request, org_slug, "org.read")
    viewer = viewer_for(request, access)
    export_format = request.GET.get("format") or "csv"
    if export_format not in FORMATS:
        return _render_list(request, viewer, export_error="Choose CSV or JSON Lines.")
    filters = RequestFilterForm(request.GET)
    if not filters.is_valid():
        return _render_list(request, viewer)
    records = filter_requests(visible_requests(viewer), filters.cleaned_data, timezone.now())
    return export_response(viewer, records, export_format)

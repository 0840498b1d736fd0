"""The usage page: requests, errors, tokens, cost and latency per org, team, key and model.

Everything is read from the hourly rollups (UsageHourly) and aggregated in SQL, so the page
costs the same number of queries for ten rows as for a million. Org-wide usage needs
spend.read; a team's usage (?team=) is also open to the team's own members.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import F, Sum
from django.db.models.functions import TruncDay
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from keys.models import CallerKey
from orgs.access import OrgAccess, get_org_access, get_team_access, visible_keys
from orgs.models import Team

from .charts import Point, bar_chart, format_usd
from .forms import DEFAULT_DAYS, UsageFilterForm
from .models import UsageHourly

TOP_ROWS = 20
MODEL_CHOICES_DAYS = 30


def usage_access(request, org_slug) -> tuple[OrgAccess, Team | None]:
    """(access, the ?team= team or None). Outsiders and unknown teams get 404; a team's usage
    is for its members and for roles with spend.read, anyone else gets 403."""
    team_id = request.GET.get("team") or None
    if team_id is None:
        return get_org_access(request, org_slug, "org.read"), None
    try:
        uuid.UUID(team_id)
    except ValueError:
        get_org_access(request, org_slug, "org.read")
        raise Http404("No such team.") from None
    access, team = get_team_access(request, org_slug, team_id, "teams.read")
    if not access.can("spend.read") and not team.members.filter(pk=request.user.pk).exists():
        raise PermissionDenied("Only the team's members and roles that read spend may see its usage.")
    return access, team


@dataclass(frozen=True)
class Window:
    days: int
    bucket: str  # "hour" or "day"
    starts: list[datetime]  # the start of each bucket, oldest first

    @property
    def since(self) -> datetime:
        return self.starts[0]

    @property
    def until(self) -> datetime:
        return self.starts[-1] + (timedelta(hours=1) if self.bucket == "hour" else timedelta(days=1))


def usage_window(days: int, now: datetime) -> Window:
    """The last 24 hours by the hour, or the last `days` days (today included) by the day, in UTC."""
    now = now.astimezone(UTC)
    if days == 1:
        current = now.replace(minute=0, second=0, microsecond=0)
        return Window(days, "hour", [current - timedelta(hours=23 - index) for index in range(24)])
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(days, "day", [today - timedelta(days=days - 1 - index) for index in range(days)])


SUMS = {
    "requests": Sum("requests", default=0),
    "errors": Sum("errors", default=0),
    "input_tokens": Sum("input_tokens", default=0),
    "output_tokens": Sum("output_tokens", default=0),
    "cost": Sum("cost", default=Decimal(0)),
    "latency_ms_sum": Sum("latency_ms_sum", default=0.0),
}


def with_rates(row: dict) -> dict:
    """Add the error rate (percent) and the average latency (ms) to summed rollups."""
    requests = row["requests"]
    row["error_rate"] = row["errors"] * 100 / requests if requests else None
    row["latency_ms"] = row["latency_ms_sum"] / requests if requests else None
    return row


def top(rows, field: str) -> list[dict]:
    grouped = rows.values(field).annotate(**SUMS).order_by("-cost", "-requests", field)[:TOP_ROWS]
    return [with_rates(row) for row in grouped]


def series(rows, window: Window) -> list[dict]:
    """One row per bucket of the window, zeros where nothing happened."""
    if window.bucket == "hour":
        grouped = rows.values(start=F("hour")).annotate(**SUMS)
    else:
        grouped = rows.annotate(start=TruncDay("hour", tzinfo=UTC)).values("start").annotate(**SUMS)
    found = {row["start"]: row for row in grouped}
    empty = {"requests": 0, "errors": 0, "cost": Decimal(0)}
    return [{"start": start, **found.get(start, empty)} for start in window.starts]


def charts_for(points: list[dict], window: Window) -> list:
    hourly = window.bucket == "hour"

    def labelled(start: datetime) -> tuple[str, str]:
        if hourly:
            return start.strftime("%H:00"), start.strftime("%Y-%m-%d %H:00 UTC")
        return start.strftime("%b %-d"), start.strftime("%Y-%m-%d")

    per = "hour" if hourly else "day"

    def plotted(field: str) -> list[Point]:
        return [Point(*labelled(row["start"]), row[field]) for row in points]

    return [
        bar_chart(
            chart_id="requests-chart", title=f"Requests per {per}", value_heading="Requests", points=plotted("requests")
        ),
        bar_chart(
            chart_id="cost-chart",
            title=f"Cost per {per} (USD)",
            value_heading="Cost",
            points=plotted("cost"),
            format_value=format_usd,
            color="#166534",
            whole=False,
        ),
        bar_chart(
            chart_id="errors-chart",
            title=f"Errors per {per}",
            value_heading="Errors",
            points=plotted("errors"),
            color="#b91c1c",
        ),
    ]


def label_teams(org, rows: list[dict]) -> None:
    names = dict(Team.objects.filter(org=org, pk__in=[row["team_id"] for row in rows]).values_list("pk", "name"))
    for row in rows:
        row["label"] = names.get(row["team_id"])


def label_keys(request, access: OrgAccess, rows: list[dict]) -> None:
    """Name the keys this person may see; others are counted but not named."""
    keys = CallerKey.objects.filter(org=access.org, pk__in=[row["key_id"] for row in rows])
    known = {key_id: (name, prefix) for key_id, name, prefix in keys.values_list("pk", "name", "prefix")}
    shown = set(visible_keys(request, access, keys).values_list("pk", flat=True)) if known else set()
    for row in rows:
        name_prefix = known.get(row["key_id"])
        row["exists"] = name_prefix is not None
        row["visible"] = row["key_id"] in shown
        row["label"], row["prefix"] = name_prefix if row["visible"] else (None, None)


@login_required
def usage(request, org_slug):
    access, team = usage_access(request, org_slug)
    all_teams = access.can("spend.read")
    if team is None and not all_teams:
        teams = Team.objects.filter(org=access.org, members=request.user).order_by("name")
        return render(request, "budgets/usage_choose_team.html", {"section": "usage", "teams": teams})

    scope = UsageHourly.objects.filter(org=access.org)
    if team is not None:
        scope = scope.filter(team_id=team.pk)
    recent_models = (
        scope.filter(hour__gte=timezone.now() - timedelta(days=MODEL_CHOICES_DAYS))
        .values_list("alias", flat=True)
        .distinct()
        .order_by("alias")[:200]
    )
    teams = Team.objects.filter(org=access.org).order_by("name")
    query = request.GET.copy()
    query.setdefault("days", str(DEFAULT_DAYS))  # so that the period shown is the one selected
    filters = UsageFilterForm(
        query,
        teams=teams if all_teams else teams.filter(members=request.user),
        all_teams=all_teams,
        models=list(recent_models),
    )
    window = usage_window(filters.value("days", DEFAULT_DAYS), timezone.now())
    rows = scope.filter(hour__gte=window.since, hour__lt=window.until)
    key_id, model = filters.value("key"), filters.value("model")
    if key_id:
        rows = rows.filter(key_id=key_id)
    if model:
        rows = rows.filter(alias=model)

    totals = with_rates(rows.aggregate(**SUMS))
    by_model = top(rows, "alias") if not model else []
    by_team = top(rows, "team_id") if team is None else []
    by_key = top(rows, "key_id") if not key_id else []
    label_teams(access.org, by_team)
    filtered_key = [{"key_id": key_id, "requests": 0}] if key_id else []
    label_keys(request, access, by_key + filtered_key)

    context = {
        "section": "usage",
        "team": team,
        "filters": filters,
        "window": window,
        "model": model,
        "filtered_key": filtered_key[0] if filtered_key else None,
        "totals": totals,
        "cost_text": format_usd(totals["cost"]),
        "charts": charts_for(series(rows, window), window),
        "by_model": by_model,
        "by_team": by_team,
        "by_key": by_key,
        "top_rows": TOP_ROWS,
        "clear_url": reverse("budgets:usage", kwargs={"org_slug": org_slug})
        + ("" if all_teams or team is None else f"?team={team.pk}"),
    }
    for table in (by_model, by_team, by_key):
        for row in table:
            row["cost_text"] = format_usd(row["cost"])
    return render(request, "budgets/usage.html", context, status=400 if filters.errors else 200)

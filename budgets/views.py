"""Portal pages of usage, budgets, prices and finance reports.

The usage page reads the hourly rollups (UsageHourly); the finance pages read the ledger
(UsageRecord), so that their money matches it to the cent. Everything is aggregated in SQL, so
each page costs the same number of queries for ten rows as for a million. Org-wide usage needs
spend.read; a team's usage (?team=) is also open to the team's own members.

Each page starts with its access check, then reads the form and writes through
budgets/services.py with the access's actor, as orgs/views.py does.
"""

import calendar
import csv
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, F, OuterRef, Prefetch, Subquery, Sum
from django.db.models.functions import TruncDay
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from redis.exceptions import RedisError

from keys.models import CallerKey, Provider
from orgs.access import OrgAccess, get_org_access, get_team_access, visible_keys
from orgs.forms import apply_service_errors
from orgs.models import Team
from orgs.views import paginate, post_only, posted
from sla.models import Deployment

from . import services
from .charts import Point, bar_chart, budget_meter, format_usd
from .forms import (
    DEFAULT_DAYS,
    SUGGESTED_PRICES,
    BudgetForm,
    BudgetSettingsForm,
    CostCenterForm,
    MonthForm,
    PriceForm,
    UsageFilterForm,
)
from .models import AlertDelivery, Budget, BudgetAlert, Price, UsageHourly, UsageRecord
from .reconcile import MICROS, reconcile_budget
from .spend import budget_spends, period_range

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


# Budgets -------------------------------------------------------------------------------------


def with_meters(budgets: list[Budget], now: datetime) -> list[Budget]:
    """Give each budget its spend this period, a meter and its period's end (None for total)."""
    spends = budget_spends(budgets, now)
    for budget in budgets:
        budget.spend = spends[budget.pk]
        budget.meter = budget_meter(budget.spend, budget.amount, budget.thresholds)
        budget.spend_text, budget.amount_text = format_usd(budget.spend), format_usd(budget.amount)
        budget.period_end = period_range(budget.period, now)[1]
    return budgets


def _budget(access: OrgAccess, budget_id) -> Budget:
    return get_object_or_404(Budget.objects.select_related("team", "key"), org=access.org, pk=budget_id)


def _write_access(request, org_slug, manage: str, read: str) -> OrgAccess:
    """Reading needs `read`; any write `manage`."""
    return get_org_access(request, org_slug, manage if request.method == "POST" else read)


@login_required
def budget_list(request, org_slug):
    access = _write_access(request, org_slug, "budgets.manage", "budgets.read")
    form = BudgetForm(posted(request), org=access.org)
    if request.method == "POST" and form.is_valid():
        try:
            budget = services.create_budget(actor=access.actor, org=access.org, **form.service_arguments())
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, f"Budget “{budget.name}” created. Gateways enforce it within seconds.")
            return redirect("budgets:budget_detail", org_slug=org_slug, budget_id=budget.pk)
    budgets = Budget.objects.filter(org=access.org).select_related("team", "key").order_by("name", "id")
    page = paginate(request, budgets)
    with_meters(list(page), timezone.now())
    context = {
        "section": "budgets",
        "page": page,
        "form": form,
        "can_manage": access.can("budgets.manage"),
    }
    return render(request, "budgets/budget_list.html", context, status=400 if form.errors else 200)


@login_required
def budget_detail(request, org_slug, budget_id):
    access = _write_access(request, org_slug, "budgets.manage", "budgets.read")
    budget = _budget(access, budget_id)
    form = BudgetSettingsForm(posted(request), initial=BudgetSettingsForm.initial_for(budget))
    if request.method == "POST" and form.is_valid():
        try:
            services.update_budget(actor=access.actor, budget=budget, **form.service_arguments())
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, "Budget saved. Gateways enforce the change within seconds.")
            return redirect("budgets:budget_detail", org_slug=org_slug, budget_id=budget.pk)
    with_meters([budget], timezone.now())
    alerts = BudgetAlert.objects.filter(budget=budget).prefetch_related(
        Prefetch("deliveries", queryset=AlertDelivery.objects.order_by("created_at", "id"))
    )
    page = paginate(request, alerts.order_by("-fired_at", "-threshold"))
    for alert in page:
        alert.spend_text = format_usd(alert.spend)
    context = {
        "section": "budgets",
        "budget": budget,
        "page": page,
        "form": form,
        "can_manage": access.can("budgets.manage"),
    }
    return render(request, "budgets/budget_detail.html", context, status=400 if form.errors else 200)


@login_required
def budget_delete(request, org_slug, budget_id):
    access = get_org_access(request, org_slug, "budgets.manage")
    budget = _budget(access, budget_id)
    if request.method == "POST":
        services.delete_budget(actor=access.actor, budget=budget)
        messages.success(request, f"Budget “{budget.name}” deleted. Gateways stop enforcing it within seconds.")
        return redirect("budgets:budget_list", org_slug=org_slug)
    return render(request, "budgets/budget_confirm_delete.html", {"section": "budgets", "budget": budget})


@login_required
def budget_reconcile(request, org_slug, budget_id):
    access = get_org_access(request, org_slug, "budgets.manage")
    budget = _budget(access, budget_id)
    if not_allowed := post_only(request):
        return not_allowed
    try:
        result = reconcile_budget(budget)
    except RedisError:
        messages.error(request, "The counters could not be rebuilt: Redis is unreachable. Try again shortly.")
    else:
        ledger = format_usd(Decimal(result.ledger) / MICROS)
        if result.changed:
            before = format_usd(Decimal(result.before) / MICROS)
            messages.success(request, f"Counters rebuilt: the gateway counted {before}, the ledger says {ledger}.")
        else:
            messages.success(request, f"Counters checked: the gateway already counts at least the ledger's {ledger}.")
    return redirect("budgets:budget_detail", org_slug=org_slug, budget_id=budget.pk)


# Prices --------------------------------------------------------------------------------------


def price_text(price: Decimal) -> str:
    text = f"{price:.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{int(whole):,}.{decimals.ljust(2, '0')}"


@login_required
def price_list(request, org_slug):
    access = _write_access(request, org_slug, "prices.manage", "budgets.read")
    form = PriceForm(posted(request), org=access.org)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.set_price(
                actor=access.actor,
                deployment=data["deployment"],
                input_per_mtok=data["input_per_mtok"],
                output_per_mtok=data["output_per_mtok"],
                cached_input_per_mtok=data["cached_input_per_mtok"],
                effective_from=data["effective_from"],
            )
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(
                request, f"Price of “{data['deployment'].name}” set from {data['effective_from']:%Y-%m-%d %H:%M} UTC."
            )
            return redirect("budgets:price_list", org_slug=org_slug)
    deployments = (
        Deployment.objects.filter(org=access.org)
        .prefetch_related(Prefetch("prices", queryset=Price.objects.order_by("-effective_from"), to_attr="catalog"))
        .order_by("name", "id")
    )
    page = paginate(request, deployments)
    now = timezone.now()
    for deployment in page:
        current = next((price for price in deployment.catalog if price.effective_from <= now), None)
        for price in deployment.catalog:
            price.is_current = price is current
            price.is_future = price.effective_from > now
            price.texts = [price_text(getattr(price, name)) for name in PRICE_COLUMNS]
        deployment.own_is_current = current is None
        deployment.own_texts = [
            price_text(deployment.input_price_per_mtok),
            price_text(deployment.output_price_per_mtok),
            price_text(Decimal(0)),
        ]
    context = {
        "section": "prices",
        "page": page,
        "form": form,
        "can_manage": access.can("prices.manage"),
        "suggested": [(model, price_text(i), price_text(o)) for model, (i, o) in SUGGESTED_PRICES.items()],
    }
    return render(request, "budgets/price_list.html", context, status=400 if form.errors else 200)


PRICE_COLUMNS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")


# Finance -------------------------------------------------------------------------------------

TOP_SPENDERS = 10
NO_PROVIDER = "(unknown)"


def month_bounds(first: date) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the calendar month starting on `first`."""
    start = datetime(first.year, first.month, 1, tzinfo=UTC)
    return start, (start + timedelta(days=32)).replace(day=1)


def linear_forecast(spent: Decimal, now: datetime) -> Decimal:
    """Spend by the end of `now`'s month at this month's daily rate so far: spend so far / days
    elapsed (today counts as one) times the days in the month, to the cent."""
    days_in_month = calendar.monthrange(now.year, now.month)[1]
    return (spent / now.day * days_in_month).quantize(Decimal("0.01"))


LEDGER_SUMS = {
    "requests": Count("request_id"),
    "input_tokens": Sum("input_tokens", default=0),
    "output_tokens": Sum("output_tokens", default=0),
    "cost": Sum("cost", default=Decimal(0)),
}


def top_spenders(records, column: str) -> list[dict]:
    rows = records.values(column).annotate(**LEDGER_SUMS).order_by("-cost", "-requests", column)[:TOP_SPENDERS]
    return [row | {"cost_text": format_usd(row["cost"])} for row in rows]


@login_required
def finance(request, org_slug):
    access = get_org_access(request, org_slug, "spend.read")
    now = timezone.now().astimezone(UTC)
    start, end = month_bounds(now.date())
    records = UsageRecord.objects.filter(org=access.org, occurred_at__gte=start, occurred_at__lt=end)
    totals = records.aggregate(**LEDGER_SUMS)

    per_day = dict(
        records.annotate(day=TruncDay("occurred_at", tzinfo=UTC))
        .values("day")
        .annotate(cost=Sum("cost"))
        .values_list("day", "cost")
    )
    days = [start + timedelta(days=index) for index in range(now.day)]
    chart = bar_chart(
        chart_id="spend-chart",
        title="Spend per day this month (USD)",
        value_heading="Spend",
        points=[Point(day.strftime("%b %-d"), day.strftime("%Y-%m-%d"), per_day.get(day, Decimal(0))) for day in days],
        format_value=format_usd,
        color="#166534",
        whole=False,
    )

    by_team = top_spenders(records, "team_id")
    label_teams(access.org, by_team)
    by_key = top_spenders(records, "key_id")
    label_keys(request, access, by_key)
    by_model = top_spenders(records, "alias")
    provider = Deployment.objects.filter(pk=OuterRef("deployment_id")).values("credential__provider")[:1]
    by_provider = top_spenders(records.annotate(provider=Subquery(provider)), "provider")
    names = dict(Provider.choices)
    for row in by_provider:
        row["label"] = names.get(row["provider"], row["provider"] or NO_PROVIDER)

    forecast = linear_forecast(totals["cost"], now)
    context = {
        "section": "finance",
        "month_start": start,
        "month_end": end,
        "totals": totals,
        "cost_text": format_usd(totals["cost"]),
        "forecast_text": format_usd(forecast),
        "days_elapsed": now.day,
        "days_in_month": calendar.monthrange(now.year, now.month)[1],
        "charts": [chart],
        "window": {"bucket": "day"},
        "by_team": by_team,
        "by_key": by_key,
        "by_model": by_model,
        "by_provider": by_provider,
        "top_rows": TOP_SPENDERS,
        "budget_count": Budget.objects.filter(org=access.org).count(),
    }
    return render(request, "budgets/finance.html", context)


# Chargeback ----------------------------------------------------------------------------------

NO_COST_CENTER = "(none)"
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ["month", "cost_center", "team", "team_id", "requests", "input_tokens", "output_tokens", "cost_usd"]


def csv_cell(value) -> str:
    """Neutralise spreadsheet formulas: a text cell starting with = + - @ tab or CR is quoted."""
    text = str(value)
    return "'" + text if text.startswith(CSV_FORMULA_STARTS) else text


@dataclass
class CostCenter:
    name: str
    teams: list[dict] = field(default_factory=list)
    requests: int = 0
    cost: Decimal = Decimal(0)

    @property
    def cost_text(self) -> str:
        return format_usd(self.cost)


def chargeback_report(org, first: date) -> tuple[list[CostCenter], Decimal]:
    """Every team of the org (deleted teams' spend too) with its spend in the month, grouped by
    cost center: "(none)" last; the total equals the ledger's sum for the month."""
    start, end = month_bounds(first)
    spend = {
        row["team_id"]: row
        for row in UsageRecord.objects.filter(org=org, occurred_at__gte=start, occurred_at__lt=end)
        .values("team_id")
        .annotate(**LEDGER_SUMS)
    }
    zero = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost": Decimal(0)}
    rows = []
    for team in Team.objects.filter(org=org).order_by("name", "id"):
        sums = spend.pop(team.pk, zero)
        rows.append({"team": team, "team_id": team.pk, "name": team.name, "cost_center": team.cost_center} | sums)
    for team_id, sums in spend.items():  # teams deleted since: their spend still counts
        rows.append({"team": None, "team_id": team_id, "name": "Deleted team", "cost_center": ""} | sums)
    centers: dict[str, CostCenter] = {}
    for row in rows:
        name = row["cost_center"] or NO_COST_CENTER
        center = centers.setdefault(name, CostCenter(name))
        row["cost_text"] = format_usd(row["cost"])
        center.teams.append(row)
        center.requests += row["requests"]
        center.cost += row["cost"]
    ordered = sorted(centers.values(), key=lambda center: (center.name == NO_COST_CENTER, center.name.lower()))
    for center in ordered:
        center.teams.sort(key=lambda row: (-row["cost"], row["name"].lower()))
    return ordered, sum((center.cost for center in ordered), Decimal(0))


def chargeback_csv(org, first: date, centers: list[CostCenter]) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="chargeback-{org.slug}-{first:%Y-%m}.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for center in centers:
        for row in center.teams:
            writer.writerow(
                [
                    f"{first:%Y-%m}",
                    csv_cell(center.name),
                    csv_cell(row["name"]),
                    row["team_id"],
                    row["requests"],
                    row["input_tokens"],
                    row["output_tokens"],
                    f"{row['cost']:.6f}",
                ]
            )
    return response


def _render_chargeback(request, access: OrgAccess, query, *, failed=None, status=200):
    """The report for the month in `query` (default this month), or its CSV for format=csv;
    `failed` is (team id, bound cost-center form) after a refused change."""
    months = MonthForm(query)
    first = (months.cleaned_data["month"] if months.is_valid() else None) or timezone.now().astimezone(UTC).date()
    first = first.replace(day=1)
    centers, total = chargeback_report(access.org, first)
    if query.get("format") == "csv" and not months.errors:
        return chargeback_csv(access.org, first, centers)
    can_manage = access.can("budgets.manage")
    if can_manage:
        for center in centers:
            for row in center.teams:
                if row["team"] is None:
                    continue
                if failed is not None and failed[0] == row["team_id"]:
                    row["form"] = failed[1]
                else:
                    row["form"] = CostCenterForm(
                        initial={"cost_center": row["cost_center"], "month": f"{first:%Y-%m}"},
                        auto_id=f"id_{row['team_id']}_%s",
                    )
    context = {
        "section": "finance",
        "months": months,
        "month": first,
        "centers": centers,
        "total_text": format_usd(total),
        "can_manage": can_manage,
        "can_export": access.can("spend.export"),
    }
    return render(request, "budgets/chargeback.html", context, status=400 if months.errors else status)


@login_required
def chargeback(request, org_slug):
    wants_csv = request.GET.get("format") == "csv"
    access = get_org_access(request, org_slug, "spend.export" if wants_csv else "spend.read")
    return _render_chargeback(request, access, request.GET)


@login_required
def cost_center(request, org_slug, team_id):
    access = get_org_access(request, org_slug, "budgets.manage")
    team = get_object_or_404(Team, org=access.org, pk=team_id)
    if not_allowed := post_only(request):
        return not_allowed
    form = CostCenterForm(request.POST, auto_id=f"id_{team.pk}_%s")
    if form.is_valid():
        try:
            services.set_cost_center(actor=access.actor, team=team, cost_center=form.cleaned_data["cost_center"])
        except ValidationError as error:
            apply_service_errors(form, error)
        else:
            messages.success(request, f"Cost center of {team.name} saved.")
            url = reverse("budgets:chargeback", kwargs={"org_slug": org_slug})
            month = form.cleaned_data["month"]
            return redirect(f"{url}?month={month}" if month else url)
    query = {"month": form.data["month"]} if form.data.get("month") and "month" not in form.errors else {}
    return _render_chargeback(request, access, query, failed=(team.pk, form), status=400)

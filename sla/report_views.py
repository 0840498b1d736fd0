"""Portal pages of measured SLOs and the model leaderboard (sla.read).

Every figure comes from sla/reports.py, aggregated in SQL, so a page costs the same number of
queries for ten requests as for a million. Filters live in the query string (?window=, ?policy=).
"""

from datetime import UTC, datetime
from decimal import Decimal

from django import forms
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone

from budgets.charts import Point, bar_chart, format_usd
from orgs.access import get_org_access

from . import reports

WINDOW_LABELS = {"1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}


class ReportFilterForm(forms.Form):
    window = forms.ChoiceField(
        choices=[(name, WINDOW_LABELS[name]) for name in reports.WINDOWS], required=False, label="Window"
    )
    policy = forms.ChoiceField(required=False, label="Policy")

    def __init__(self, data, *, policies: reports.Policies, **kwargs):
        super().__init__(data, **kwargs)
        choices = [("", "All requests")] + [(str(p.pk), p.name) for p in policies.ordered()]
        if policies.default is None:
            choices.append((reports.NO_POLICY, "No policy"))
        self.fields["policy"].choices = choices

    def chosen(self) -> tuple[str, str | None]:
        """(window, policy key or None); the default window where the input was bad."""
        self.is_valid()  # cleaned_data keeps the fields that were valid
        data = self.cleaned_data
        return data.get("window") or reports.DEFAULT_WINDOW, data.get("policy") or None


def percent_text(value: Decimal | None, places: int = 3) -> str:
    return "—" if value is None else f"{value:.{places}f}%"


def chart_points(buckets: list[reports.Bucket], bucket: str, value_of) -> list[Point]:
    def labels(moment: datetime) -> tuple[str, str]:
        if bucket == "hour":
            return moment.strftime("%H:00"), moment.strftime("%Y-%m-%d %H:00 UTC")
        return moment.strftime("%b %-d"), moment.strftime("%Y-%m-%d")

    points = []
    for row in buckets:
        short, full = labels(row.start)
        value = value_of(row)
        points.append(Point(short, full if value is not None else f"{full} (no requests)", value or 0))
    return points


def report_charts(buckets: list[reports.Bucket], bucket: str) -> list:
    per = "hour" if bucket == "hour" else "day"
    return [
        bar_chart(
            chart_id="availability-chart",
            title=f"Availability per {per} (%)",
            value_heading="Availability",
            points=chart_points(buckets, bucket, lambda row: row.availability_percent),
            format_value=lambda value: f"{Decimal(value):.3f}%",
            color="#15803d",
            whole=False,
        ),
        bar_chart(
            chart_id="latency-chart",
            title=f"p95 latency per {per} (ms)",
            value_heading="p95 latency",
            points=chart_points(
                buckets,
                bucket,
                lambda row: None if row.p95_latency_ms is None else Decimal(row.p95_latency_ms).quantize(Decimal(1)),
            ),
            color="#3730a3",
        ),
    ]


def targets_note(policies: reports.Policies, policy_key: str | None) -> str:
    targets = policies.targets_for(policy_key)
    if targets is None:
        return "No policy applies, so these figures are held to no targets."
    whose = "the chosen policy" if policy_key else "the org default policy"
    return f"Held to the targets of {whose}, “{targets.name}”."


@login_required
def report(request, org_slug):
    access = get_org_access(request, org_slug, "sla.read")
    policies = reports.Policies.of(access.org)
    form = ReportFilterForm(request.GET, policies=policies)
    window, policy_key = form.chosen()
    start, end = reports.window_bounds(window, timezone.now())
    records = reports.ledger(access.org, start, end)
    if policy_key is not None:
        records = records.filter(policies.requests_of(policy_key))
    bucket = "hour" if reports.WINDOWS[window].days < 2 else "day"
    buckets = reports.series(records, start, end, bucket)
    by_policy = reports.by_policy(access.org, start, end, policies)
    if policy_key is not None:
        by_policy = [row for row in by_policy if row.key == policy_key]
    context = {
        "section": "sla_reports",
        "form": form,
        "window": {"name": window, "label": WINDOW_LABELS[window], "bucket": bucket},
        "start": start,
        "end": end,
        "policy_key": policy_key,
        "targets": policies.targets_for(policy_key),
        "targets_note": targets_note(policies, policy_key),
        "has_policies": bool(policies.by_id),
        "by_policy": by_policy,
        "by_route": reports.by_route(access.org, start, end, policy_key, policies),
        "by_deployment": reports.by_deployment(access.org, start, end, policy_key, policies),
        "deployment_note": targets_note(policies, policy_key),
        "charts": report_charts(buckets, bucket),
    }
    return render(request, "sla/report.html", context)


@login_required
def leaderboard(request, org_slug):
    access = get_org_access(request, org_slug, "sla.read")
    form = ReportFilterForm(request.GET, policies=reports.Policies(None, {}, {}))
    window, _policy = form.chosen()
    start, end = reports.window_bounds(window, timezone.now().astimezone(UTC))
    rows = reports.leaderboard(access.org, start, end)
    for row in rows:
        row.cost_text = format_usd(row.cost)
    context = {
        "section": "model_leaderboard",
        "form": form,
        "window": {"name": window, "label": WINDOW_LABELS[window]},
        "start": start,
        "end": end,
        "rows": rows,
    }
    return render(request, "sla/leaderboard.html", context)

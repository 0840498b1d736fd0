"""Spend read from the ledger: per budget and period, and aggregated for reports.

The ledger (UsageRecord) is the truth for money; the gateway's Redis counters are rebuilt
from it. Money is Decimal here (DESIGN.md promise 9).

The hourly rollups (UsageHourly) are written by the statement that inserts ledger rows, so
their sums over whole hours equal the ledger's to the micro-dollar. Every budget period starts
and ends at a UTC midnight, a whole hour, so `rollup_spends` gives exactly what `budget_spend`
gives, reading a few rows per hour instead of every request.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDay

from gateway.budgets import period_bounds

from .models import Budget, UsageHourly, UsageRecord


def period_range(period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """(start, end) in UTC of the calendar period containing `now`; (None, None) for total."""
    _label, end = period_bounds(period, now)
    if end is None:
        return None, None
    if period == "daily":
        return now.replace(hour=0, minute=0, second=0, microsecond=0), end
    if period == "weekly":
        return end - timedelta(days=7), end
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), end


def budget_scope_filter(budget: Budget) -> Q:
    if budget.scope == Budget.Scope.TEAM:
        return Q(team_id=budget.team_id)
    if budget.scope == Budget.Scope.KEY:
        return Q(key_id=budget.key_id)
    return Q()


def budget_spend(budget: Budget, now: datetime | None = None) -> Decimal:
    """What the ledger says was spent under a budget in its current period."""
    now = now or datetime.now(UTC)
    start, end = period_range(budget.period, now)
    records = UsageRecord.objects.filter(budget_scope_filter(budget), org_id=budget.org_id)
    if start is not None:
        records = records.filter(occurred_at__gte=start, occurred_at__lt=end)
    return records.aggregate(total=Sum("cost"))["total"] or Decimal(0)


def budget_spends(budgets: list[Budget], now: datetime) -> dict:
    """{budget id: spend in its current period}, as budget_spend reads it, for many budgets of
    one org in one query: one conditional sum per budget."""
    if not budgets:
        return {}
    sums = {}
    for index, budget in enumerate(budgets):
        condition = budget_scope_filter(budget)
        start, end = period_range(budget.period, now)
        if start is not None:
            condition &= Q(occurred_at__gte=start, occurred_at__lt=end)
        sums[f"budget_{index}"] = Sum("cost", filter=condition or None, default=Decimal(0))
    totals = UsageRecord.objects.filter(org_id=budgets[0].org_id).aggregate(**sums)
    return {budget.pk: totals[f"budget_{index}"] for index, budget in enumerate(budgets)}


def _whole_hour(moment: datetime) -> datetime:
    if moment.utcoffset() != timedelta(0) or moment.minute or moment.second or moment.microsecond:
        # The rollups cannot tell which part of an hour spend fell in.
        raise ValueError(f"a budget period must start and end on a whole UTC hour, not at {moment.isoformat()}")
    return moment


def rollup_spends(budgets: list[Budget], now: datetime) -> dict:
    """{budget id: spend in its current period}, equal to budget_spend's, for many budgets of
    one org in one query over the hourly rollups (one conditional sum per budget)."""
    if not budgets:
        return {}
    now = now.astimezone(UTC)
    sums, starts = {}, []
    for index, budget in enumerate(budgets):
        condition = budget_scope_filter(budget)
        start, end = period_range(budget.period, now)
        if start is not None and end is not None:
            condition &= Q(hour__gte=_whole_hour(start), hour__lt=_whole_hour(end))
        starts.append(start)
        sums[f"budget_{index}"] = Sum("cost", filter=condition or None, default=Decimal(0))
    rows = UsageHourly.objects.filter(org_id=budgets[0].org_id)
    if None not in starts:  # no total budget: only the hours of the longest current period
        rows = rows.filter(hour__gte=min(start for start in starts if start is not None))
    totals = rows.aggregate(**sums)
    return {budget.pk: totals[f"budget_{index}"] for index, budget in enumerate(budgets)}


DIMENSIONS = {"team": "team_id", "key": "key_id", "model": "alias", "deployment": "deployment_id", "day": "day"}


def spend_by(org, start: datetime, end: datetime, dimension: str) -> list[dict]:
    """Rows of {dimension value, requests, input_tokens, output_tokens, cost} for [start, end)."""
    records = UsageRecord.objects.filter(org=org, occurred_at__gte=start, occurred_at__lt=end)
    if dimension == "day":
        records = records.annotate(day=TruncDay("occurred_at", tzinfo=UTC))
    column = DIMENSIONS[dimension]
    return list(
        records.values(column)
        .annotate(
            requests=Count("request_id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost"),
        )
        .order_by(column if dimension == "day" else "-cost")
    )

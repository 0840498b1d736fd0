"""Budgets, prices and spend over the API: /api/v1/orgs/<org_slug>/{budgets,prices,spend}/, a
team's cost center and the org's budget fail-open setting.

One view per route, one method per operation, its serializers beside it. Every method checks
access first (orgs/access.py), validates input, and writes through budgets/services.py. Money is
a decimal string in USD (DESIGN.md promise 9); days and periods are calendar days in UTC.
"""

import csv
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.http import StreamingHttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response

from controlplane.api import (
    BaseApi,
    ListApi,
    SearchQuery,
    StrictCharField,
    StrictDecimalField,
    StrictIntegerField,
    StrictListField,
    StrictUUIDField,
    found,
    name_field,
    validated,
)
from keys.models import CallerKey
from orgs import services as org_services
from orgs.access import get_org_access
from orgs.api import TeamReferenceOutput
from orgs.models import Team
from sla.models import Deployment

from . import services
from .models import Budget, Price
from .spend import DIMENSIONS, budget_spend, budget_spends, period_range, spend_by

MAX_THRESHOLDS = 10
MAX_REPORT_DAYS = 366
EARLIEST_REPORT_DAY = date(2000, 1, 1)
LATEST_REPORT_DAY = date(9998, 12, 31)
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# Budgets -----------------------------------------------------------------------------------


class KeyReferenceOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()


SPEND_FIELD = serializers.DecimalField(
    max_digits=24, decimal_places=6, help_text="USD spent in the current period, from the usage ledger."
)
PERCENT_FIELD = serializers.DecimalField(max_digits=24, decimal_places=2, help_text="spend / amount, in percent.")


class BudgetOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    scope = serializers.ChoiceField(choices=Budget.Scope.choices)
    team = TeamReferenceOutput(allow_null=True, help_text="The team of a team budget; null otherwise.")
    key = KeyReferenceOutput(allow_null=True, help_text="The caller key of a key budget; null otherwise.")
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="USD per period.")
    period = serializers.ChoiceField(choices=Budget.Period.choices, help_text="Calendar periods in UTC.")
    hard = serializers.BooleanField(help_text="True: requests that would cross it are refused; false: alerts only.")
    thresholds = serializers.ListField(child=serializers.IntegerField(), help_text="Alert at these percentages.")
    emails = serializers.ListField(child=serializers.EmailField())
    webhooks = serializers.ListField(child=serializers.URLField())
    created_at = serializers.DateTimeField()
    spend = serializers.SerializerMethodField()
    percent_used = serializers.SerializerMethodField()
    period_start = serializers.SerializerMethodField()
    period_end = serializers.SerializerMethodField()

    # context: "now", and "spends" (budget id -> spend this period, from budget_spends).

    @extend_schema_field(SPEND_FIELD)
    def get_spend(self, budget: Budget) -> str:
        return SPEND_FIELD.to_representation(self.context["spends"][budget.pk])

    @extend_schema_field(PERCENT_FIELD)
    def get_percent_used(self, budget: Budget) -> str:
        return PERCENT_FIELD.to_representation(self.context["spends"][budget.pk] * 100 / budget.amount)

    @extend_schema_field(serializers.DateTimeField(allow_null=True, help_text="Null for a total budget."))
    def get_period_start(self, budget: Budget) -> str | None:
        start, _end = period_range(budget.period, self.context["now"])
        return None if start is None else serializers.DateTimeField().to_representation(start)

    @extend_schema_field(serializers.DateTimeField(allow_null=True, help_text="When it resets; null for total."))
    def get_period_end(self, budget: Budget) -> str | None:
        _start, end = period_range(budget.period, self.context["now"])
        return None if end is None else serializers.DateTimeField().to_representation(end)


def amount_field(**kwargs) -> StrictDecimalField:
    return StrictDecimalField(
        max_digits=11,
        decimal_places=2,
        min_value=Decimal("0.01"),
        max_value=services.MAX_BUDGET,
        help_text=f'USD per period, as a string: "500.00"; above 0 and at most {services.MAX_BUDGET:,}.',
        **kwargs,
    )


def validate_thresholds(value: list[int]) -> list[int]:
    if not value:
        raise serializers.ValidationError("Give at least one threshold.")
    if value != sorted(set(value)):
        raise serializers.ValidationError("List thresholds from low to high, each once.")
    return value


def thresholds_field(**kwargs) -> StrictListField:
    return StrictListField(
        child=StrictIntegerField(min_value=1, max_value=100),
        max_length=MAX_THRESHOLDS,
        validators=[validate_thresholds],
        help_text="Whole percentages from 1 to 100, low to high, each once.",
        **kwargs,
    )


def emails_field(**kwargs) -> StrictListField:
    return StrictListField(
        child=StrictCharField(max_length=254), max_length=services.MAX_TARGETS, help_text="Alert emails.", **kwargs
    )


def webhooks_field(**kwargs) -> StrictListField:
    return StrictListField(
        child=StrictCharField(max_length=500),
        max_length=services.MAX_TARGETS,
        help_text="Alert webhook URLs (http or https); each alert is POSTed as signed JSON.",
        **kwargs,
    )


class BudgetCreateInput(serializers.Serializer):
    name = name_field(100)
    scope = serializers.ChoiceField(choices=Budget.Scope.choices)
    team = StrictUUIDField(required=False, allow_null=True, help_text="The team's UUID; only for scope team.")
    key = StrictUUIDField(required=False, allow_null=True, help_text="The caller key's UUID; only for scope key.")
    amount = amount_field()
    period = serializers.ChoiceField(choices=Budget.Period.choices)
    hard = serializers.BooleanField(default=True, help_text="Refuse requests that would cross it (else alert only).")
    thresholds = thresholds_field(required=False, default=[50, 80, 100])
    emails = emails_field(required=False, default=list)
    webhooks = webhooks_field(required=False, default=list)

    def validate(self, data):
        errors = {}
        for target in ("team", "key"):
            if data.get("scope") == target and not data.get(target):
                errors[target] = [f"Name the {target} of a {target} budget."]
            if data.get("scope") != target and data.get(target):
                errors[target] = [f"Only a {target} budget names a {target}."]
        if errors:
            raise serializers.ValidationError(errors)
        return data


class BudgetUpdateInput(serializers.Serializer):
    name = name_field(100)
    amount = amount_field()
    hard = serializers.BooleanField()
    thresholds = thresholds_field()
    emails = emails_field()
    webhooks = webhooks_field()

    def validate(self, data):
        fixed = sorted({"scope", "team", "key", "period"} & set(self.initial_data))
        if fixed:
            raise serializers.ValidationError(
                {name: ["A budget's scope and period cannot change: create a new budget."] for name in fixed}
            )
        return data


class BudgetQuery(SearchQuery):
    scope = serializers.ChoiceField(choices=Budget.Scope.choices, required=False)
    team = serializers.UUIDField(required=False, help_text="Only this team's budgets.")
    key = serializers.UUIDField(required=False, help_text="Only this caller key's budgets.")


def budgets_of(org):
    return Budget.objects.filter(org=org).select_related("team", "key").order_by("name", "id")


def budget_body(budget: Budget, now: datetime | None = None) -> dict:
    """One budget's output, its spend from budget_spend."""
    now = now or datetime.now(UTC)
    return BudgetOutput(budget, context={"now": now, "spends": {budget.pk: budget_spend(budget, now)}}).data


@extend_schema(tags=["budgets"])
class BudgetListApi(ListApi):
    @extend_schema(
        parameters=[BudgetQuery],
        responses=BudgetOutput(many=True),
        summary="List budgets, each with its spend this period",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "budgets.read")
        query = validated(BudgetQuery, request.query_params)
        budgets = budgets_of(access.org)
        if query.get("q"):
            budgets = budgets.filter(name__icontains=query["q"])
        for field in ("scope", "team", "key"):
            if query.get(field):
                budgets = budgets.filter(**{field: query[field]})
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(budgets, request, view=self)
        now = datetime.now(UTC)
        context = {"now": now, "spends": budget_spends(page, now)}
        return paginator.get_paginated_response(BudgetOutput(page, many=True, context=context).data)

    @extend_schema(
        request=BudgetCreateInput,
        responses={201: BudgetOutput},
        summary="Set a budget on the org, a team or a caller key",
        description="A hard budget refuses the request that would cross it; a soft one only alerts. "
        "Periods are calendar days, weeks (Monday to Sunday) and months in UTC, or the total.",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "budgets.manage")
        data = validated(BudgetCreateInput, request.data)
        team = found(Team.objects.filter(org=access.org, pk=data["team"])) if data.get("team") else None
        key = found(CallerKey.objects.filter(org=access.org, pk=data["key"])) if data.get("key") else None
        budget = services.create_budget(
            actor=access.actor,
            org=access.org,
            name=data["name"],
            scope=data["scope"],
            amount=data["amount"],
            period=data["period"],
            hard=data["hard"],
            team=team,
            key=key,
            thresholds=data["thresholds"],
            emails=data["emails"],
            webhooks=data["webhooks"],
        )
        return Response(budget_body(budgets_of(access.org).get(pk=budget.pk)), status=status.HTTP_201_CREATED)


@extend_schema(tags=["budgets"])
class BudgetDetailApi(BaseApi):
    @extend_schema(responses=BudgetOutput, summary="Get a budget with its spend this period")
    def get(self, request, org_slug, budget_id):
        access = get_org_access(request, org_slug, "budgets.read")
        budget = found(budgets_of(access.org).filter(pk=budget_id))
        return Response(budget_body(budget))

    @extend_schema(
        request=BudgetUpdateInput(partial=True),
        responses=BudgetOutput,
        summary="Change a budget's name, amount, hardness, thresholds or alert targets",
        description="Scope, target and period cannot change: create a new budget instead.",
    )
    def patch(self, request, org_slug, budget_id):
        access = get_org_access(request, org_slug, "budgets.manage")
        budget = found(budgets_of(access.org).filter(pk=budget_id))
        changes = validated(BudgetUpdateInput, request.data, partial=True)
        current = {
            "name": budget.name,
            "amount": budget.amount,
            "hard": budget.hard,
            "thresholds": list(budget.thresholds),
            "emails": list(budget.emails),
            "webhooks": list(budget.webhooks),
        }
        services.update_budget(actor=access.actor, budget=budget, **{**current, **changes})
        return Response(budget_body(budgets_of(access.org).get(pk=budget.pk)))

    @extend_schema(request=None, responses={204: None}, summary="Delete a budget: the gateway stops enforcing it")
    def delete(self, request, org_slug, budget_id):
        access = get_org_access(request, org_slug, "budgets.manage")
        budget = found(Budget.objects.filter(org=access.org, pk=budget_id).select_related("org"))
        services.delete_budget(actor=access.actor, budget=budget)
        return Response(status=status.HTTP_204_NO_CONTENT)


# Prices ------------------------------------------------------------------------------------


def price_field(help_text: str, **kwargs) -> StrictDecimalField:
    return StrictDecimalField(
        max_digits=12,
        decimal_places=6,
        min_value=0,
        max_value=services.MAX_PRICE_PER_MTOK,
        help_text=help_text,
        **kwargs,
    )


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 moment with its time zone: a bare local time would be read as UTC silently."""

    default_error_messages = {"naive": "Give the time with its time zone, e.g. 2025-07-01T00:00:00Z."}

    def to_internal_value(self, value):
        moment = super().to_internal_value(value)
        if isinstance(value, str) and (parsed := parse_datetime(value)) is not None and parsed.tzinfo is None:
            self.fail("naive")
        return moment


class DeploymentReferenceOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    upstream_model = serializers.CharField()


class PriceOutput(serializers.Serializer):
    id = serializers.UUIDField()
    deployment = DeploymentReferenceOutput()
    input_per_mtok = price_field("USD per million input tokens.")
    output_per_mtok = price_field("USD per million output tokens.")
    cached_input_per_mtok = price_field("USD per million cached input tokens.")
    effective_from = serializers.DateTimeField(help_text="Requests from this moment on are charged this price.")
    created_at = serializers.DateTimeField()


class PriceCreateInput(serializers.Serializer):
    deployment = StrictUUIDField(help_text="A deployment of the org.")
    input_per_mtok = price_field('USD per million input tokens, as a string: "2.50".')
    output_per_mtok = price_field('USD per million output tokens, as a string: "10.00".')
    cached_input_per_mtok = price_field("USD per million cached input tokens; default 0.", required=False)
    effective_from = AwareDateTimeField(
        required=False,
        help_text="When the price starts, with its time zone; default now. Spend already recorded keeps its price.",
    )


class PriceQuery(serializers.Serializer):
    deployment = serializers.UUIDField(required=False, help_text="Only this deployment's prices.")


def prices_of(org):
    return Price.objects.filter(org=org).select_related("deployment").order_by("-effective_from", "-created_at", "id")


@extend_schema(tags=["prices"])
class PriceListApi(ListApi):
    @extend_schema(
        parameters=[PriceQuery],
        responses=PriceOutput(many=True),
        summary="The price catalog, newest first",
        description="Every price each deployment has had; the newest one already in effect applies.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "budgets.read")
        query = validated(PriceQuery, request.query_params)
        prices = prices_of(access.org)
        if query.get("deployment"):
            prices = prices.filter(deployment_id=query["deployment"])
        return self.paginated_response(prices, PriceOutput)

    @extend_schema(
        request=PriceCreateInput,
        responses={201: PriceOutput},
        summary="Set a deployment's price from a moment on",
        description="Past spend is never repriced: the ledger keeps what each request cost when it ran.",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "prices.manage")
        data = validated(PriceCreateInput, request.data)
        deployment = found(Deployment.objects.filter(org=access.org, pk=data["deployment"]).select_related("org"))
        price = services.set_price(
            actor=access.actor,
            deployment=deployment,
            input_per_mtok=data["input_per_mtok"],
            output_per_mtok=data["output_per_mtok"],
            cached_input_per_mtok=data.get("cached_input_per_mtok", Decimal(0)),
            effective_from=data.get("effective_from"),
        )
        return Response(PriceOutput(prices_of(access.org).get(pk=price.pk)).data, status=status.HTTP_201_CREATED)


# Spend -------------------------------------------------------------------------------------


def first_of_month(day: date) -> date:
    return day.replace(day=1)


def first_of_next_month(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


def validate_report_day(value: date) -> date:
    if not EARLIEST_REPORT_DAY <= value <= LATEST_REPORT_DAY:
        raise serializers.ValidationError(f"Choose a day from {EARLIEST_REPORT_DAY} to {LATEST_REPORT_DAY}.")
    return value


class SpendQuery(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=list(DIMENSIONS), default="day")
    start = serializers.DateField(
        required=False,
        input_formats=["%Y-%m-%d"],
        validators=[validate_report_day],
        help_text="First day (UTC), YYYY-MM-DD; default: the first of the month of `end`, or of this month.",
    )
    end = serializers.DateField(
        required=False,
        input_formats=["%Y-%m-%d"],
        validators=[validate_report_day],
        help_text="The day after the last (UTC, exclusive), YYYY-MM-DD; default: the first of the next month.",
    )
    format = serializers.ChoiceField(
        choices=["json", "csv"], default="json", help_text="csv: a file download (needs spend.export)."
    )

    def validate(self, data):
        start, end = data.get("start"), data.get("end")
        if start is None:
            start = first_of_month(end - timedelta(days=1) if end else datetime.now(UTC).date())
        if end is None:
            end = first_of_next_month(start)
        if start >= end:
            raise serializers.ValidationError({"end": ["End after the start: the end day is not included."]})
        if (end - start).days > MAX_REPORT_DAYS:
            raise serializers.ValidationError({"end": [f"Report at most {MAX_REPORT_DAYS} days at a time."]})
        return {**data, "start": start, "end": end}


class SpendTotalOutput(serializers.Serializer):
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=24, decimal_places=6, help_text="USD.")


class SpendRowOutput(SpendTotalOutput):
    group = serializers.CharField(
        allow_null=True,
        help_text="The team, key or deployment UUID, the model alias, or the day (YYYY-MM-DD); "
        "null for requests that reached no deployment.",
    )
    name = serializers.CharField(allow_null=True, help_text="The team's, key's or deployment's name; null if gone.")


class SpendReportOutput(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=list(DIMENSIONS))
    start = serializers.DateField()
    end = serializers.DateField(help_text="Exclusive.")
    total = SpendTotalOutput()
    rows = SpendRowOutput(many=True, help_text="Most expensive first; by day, in date order.")


def names_of(org, dimension: str, values: set) -> dict:
    """Display names for a report's groups, in one query."""
    model = {"team": Team, "key": CallerKey, "deployment": Deployment}.get(dimension)
    if model is None:
        return {}
    return dict(model.objects.filter(org=org, pk__in=values - {None}).values_list("pk", "name"))


def spend_report(org, dimension: str, start: date, end: date) -> dict:
    def moment(day: date) -> datetime:
        return datetime.combine(day, time.min, tzinfo=UTC)

    column = DIMENSIONS[dimension]
    groups = spend_by(org, moment(start), moment(end), dimension)
    names = names_of(org, dimension, {group[column] for group in groups})
    rows = []
    for group in groups:
        value = group[column]
        if dimension == "day":
            value = name = value.date().isoformat()
        elif dimension == "model":
            name = value
        else:
            name = names.get(value)
        totals = {field: group[field] for field in ("requests", "input_tokens", "output_tokens", "cost")}
        rows.append({"group": None if value is None else str(value), "name": name, **totals})
    total = {
        field: sum((row[field] for row in rows), Decimal(0) if field == "cost" else 0)
        for field in ("requests", "input_tokens", "output_tokens", "cost")
    }
    return {"group_by": dimension, "start": start, "end": end, "total": total, "rows": rows}


class JsonNegotiation(DefaultContentNegotiation):
    """The spend report's `format` picks JSON or a CSV file the view streams itself; DRF would
    take it for a renderer's name and answer 404. Everything DRF renders, errors too, is JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        renderer = next(renderer for renderer in renderers if renderer.format == "json")
        return renderer, renderer.media_type


def csv_cell(value) -> str:
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_PREFIXES) else text


class Echo:
    """A file-like object csv.writer writes a line to and gets it straight back."""

    def write(self, value: str) -> str:
        return value


def csv_lines(report: dict) -> Iterator[str]:
    writer = csv.writer(Echo())
    yield writer.writerow([report["group_by"], "name", "requests", "input_tokens", "output_tokens", "cost_usd"])
    for row in report["rows"]:
        cells = (row["group"], row["name"], row["requests"], row["input_tokens"], row["output_tokens"])
        yield writer.writerow([*map(csv_cell, cells), csv_cell(f"{row['cost']:.6f}")])


@extend_schema(tags=["spend"])
class SpendApi(BaseApi):
    content_negotiation_class = JsonNegotiation

    @extend_schema(
        parameters=[SpendQuery],
        responses={
            (200, "application/json"): SpendReportOutput,
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="With format=csv: the rows as a file."),
        },
        summary="Spend from the usage ledger, by team, key, model, deployment or day",
        description="Days are UTC; at most 366 of them. Amounts are USD decimal strings with 6 places and add "
        "up to the ledger exactly. format=csv streams the same rows as a file and needs spend.export.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "spend.read")
        # A role too low is refused before its query is looked at.
        if request.query_params.get("format") == "csv":
            access.require("spend.export")
        query = validated(SpendQuery, request.query_params)
        report = spend_report(access.org, query["group_by"], query["start"], query["end"])
        if query["format"] != "csv":
            return Response(SpendReportOutput(report).data)
        filename = f"spend-{access.org.slug}-{query['group_by']}-{query['start']}-{query['end']}.csv"
        response = StreamingHttpResponse(csv_lines(report), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response


# Cost centers and the budget fail-open setting ------------------------------------------


class CostCenterInput(serializers.Serializer):
    cost_center = StrictCharField(max_length=64, allow_blank=True, help_text="Chargeback code; empty clears it.")


class CostCenterOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    cost_center = serializers.CharField()


@extend_schema(tags=["teams"])
class TeamCostCenterApi(BaseApi):
    @extend_schema(
        request=CostCenterInput,
        responses=CostCenterOutput,
        summary="Set the cost center a team's spend is charged back to",
    )
    def put(self, request, org_slug, team_id):
        access = get_org_access(request, org_slug, "budgets.manage")
        team = found(Team.objects.filter(org=access.org, pk=team_id).select_related("org"))
        data = validated(CostCenterInput, request.data)
        team = services.set_cost_center(actor=access.actor, team=team, cost_center=data["cost_center"])
        return Response(CostCenterOutput(team).data)


class BudgetFailOpenInput(serializers.Serializer):
    fail_open = serializers.BooleanField(
        help_text="While the gateway cannot reach Redis: true admits budget-bound requests, false refuses them (503)."
    )


@extend_schema(tags=["budgets"])
class BudgetFailOpenApi(BaseApi):
    @extend_schema(
        request=BudgetFailOpenInput,
        responses=BudgetFailOpenInput,
        summary="Choose whether budget-bound requests are admitted while budgets cannot be checked",
    )
    def put(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.manage")
        data = validated(BudgetFailOpenInput, request.data)
        org = org_services.set_budget_fail_open(actor=access.actor, org=access.org, fail_open=data["fail_open"])
        return Response(BudgetFailOpenInput({"fail_open": org.budget_fail_open}).data)

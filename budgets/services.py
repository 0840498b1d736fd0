"""Budgets and prices: each change with its audit event and config change in one transaction."""

from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import transaction
from django.utils import timezone

from audit.context import Actor
from audit.services import changes, record_event
from fleet.changes import record_config_change
from keys.upstream_urls import check_upstream_url
from orgs.models import Organization, Team
from sla.models import Deployment

from .models import Budget, Price

MAX_BUDGET = Decimal("100000000")  # USD; anything above is a typo
MAX_PRICE_PER_MTOK = Decimal("10000")
MAX_TARGETS = 20


def clean_amount(value, field: str = "amount", *, maximum: Decimal = MAX_BUDGET, places: int = 2) -> Decimal:
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError({field: ["Enter an amount in dollars, e.g. 500 or 1250.50."]}) from None
    if not amount.is_finite() or amount <= 0 or amount > maximum:
        raise ValidationError({field: [f"Use an amount above 0 and at most {maximum:,}."]})
    if amount.as_tuple().exponent < -places:
        raise ValidationError({field: [f"Use at most {places} decimal places."]})
    return amount.quantize(Decimal(1).scaleb(-places))


def clean_price(value, field: str) -> Decimal:
    """USD per million tokens: zero (free) up to MAX_PRICE_PER_MTOK, at most 6 decimal places."""
    try:
        price = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError({field: ["Enter dollars per million tokens, e.g. 2.50."]}) from None
    if not price.is_finite() or price < 0 or price > MAX_PRICE_PER_MTOK:
        raise ValidationError({field: [f"Use a price from 0 to {MAX_PRICE_PER_MTOK:,} dollars per million tokens."]})
    if price.as_tuple().exponent < -6:
        raise ValidationError({field: ["Use at most 6 decimal places."]})
    return price.quantize(Decimal("0.000001"))


def clean_thresholds(values) -> list[int]:
    try:
        thresholds = [int(value) for value in values]
    except (TypeError, ValueError):
        raise ValidationError({"thresholds": ["Use whole percentages, e.g. 50, 80, 100."]}) from None
    if not thresholds or len(thresholds) > 10:
        raise ValidationError({"thresholds": ["Give from 1 to 10 thresholds."]})
    if any(not 1 <= t <= 100 for t in thresholds):
        raise ValidationError({"thresholds": ["Each threshold is a percentage from 1 to 100."]})
    if thresholds != sorted(set(thresholds)):
        raise ValidationError({"thresholds": ["List thresholds from low to high, each once."]})
    return thresholds


def clean_targets(emails: list[str], webhooks: list[str]) -> tuple[list[str], list[str]]:
    errors: dict[str, list[str]] = {}
    if len(emails) > MAX_TARGETS or len(webhooks) > MAX_TARGETS:
        errors["emails" if len(emails) > MAX_TARGETS else "webhooks"] = [f"At most {MAX_TARGETS}."]
    for email in emails:
        try:
            validate_email(email)
        except ValidationError:
            errors.setdefault("emails", []).append(f"{email[:100]!r} is not an email address.")
    cleaned_hooks = []
    for hook in webhooks:
        try:
            URLValidator(schemes=["https", "http"])(hook)
            cleaned_hooks.append(check_upstream_url(hook, field="webhooks"))
        except ValidationError as error:
            messages = (
                error.message_dict.get("webhooks", error.messages) if hasattr(error, "error_dict") else error.messages
            )
            errors.setdefault("webhooks", []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return [e.strip().lower() for e in emails], cleaned_hooks


def _snapshot(budget: Budget) -> dict:
    return {
        "name": budget.name,
        "scope": budget.scope,
        "target": str(budget.team_id or budget.key_id or budget.org_id),
        "amount": str(budget.amount),
        "period": budget.period,
        "hard": budget.hard,
        "thresholds": list(budget.thresholds),
        "emails": list(budget.emails),
        "webhooks": list(budget.webhooks),
    }


@transaction.atomic
def create_budget(
    *,
    actor: Actor,
    org: Organization,
    name: str,
    scope: str,
    amount,
    period: str,
    hard: bool = True,
    team: Team | None = None,
    key=None,
    thresholds=(50, 80, 100),
    emails: list[str] | None = None,
    webhooks: list[str] | None = None,
) -> Budget:
    """A budget on the org, one of its teams, or one of its keys."""
    if scope not in Budget.Scope.values:
        raise ValidationError({"scope": [f"Use one of: {', '.join(Budget.Scope.values)}."]})
    if period not in Budget.Period.values:
        raise ValidationError({"period": [f"Use one of: {', '.join(Budget.Period.values)}."]})
    if scope == "team" and (team is None or team.org_id != org.pk):
        raise ValidationError({"team": ["Choose a team of this organization."]})
    if scope == "key" and (key is None or key.org_id != org.pk):
        raise ValidationError({"key": ["Choose a key of this organization."]})
    emails, webhooks = clean_targets(emails or [], webhooks or [])
    budget = Budget.objects.create(
        org=org,
        name=name.strip(),
        scope=scope,
        team=team if scope == "team" else None,
        key=key if scope == "key" else None,
        amount=clean_amount(amount),
        period=period,
        hard=hard,
        thresholds=clean_thresholds(thresholds),
        emails=emails,
        webhooks=webhooks,
    )
    event = record_event(
        actor=actor, org=org, action="budget.created", target=budget, diff=changes({}, _snapshot(budget))
    )
    record_config_change("budget", budget.pk, cause=event)
    return budget


@transaction.atomic
def update_budget(
    *, actor: Actor, budget: Budget, name: str, amount, hard: bool, thresholds, emails: list[str], webhooks: list[str]
) -> Budget:
    """Change a budget's name, amount, hardness, thresholds or notification targets."""
    budget = Budget.objects.select_for_update().select_related("org").get(pk=budget.pk)
    before = _snapshot(budget)
    emails, webhooks = clean_targets(emails, webhooks)
    budget.name, budget.amount, budget.hard = name.strip(), clean_amount(amount), hard
    budget.thresholds, budget.emails, budget.webhooks = clean_thresholds(thresholds), emails, webhooks
    diff = changes(before, _snapshot(budget))
    if diff:
        budget.save()
        event = record_event(actor=actor, org=budget.org, action="budget.updated", target=budget, diff=diff)
        record_config_change("budget", budget.pk, cause=event)
    return budget


@transaction.atomic
def delete_budget(*, actor: Actor, budget: Budget) -> None:
    """Remove a budget; the gateway stops enforcing it at once."""
    event = record_event(
        actor=actor, org=budget.org, action="budget.deleted", target=budget, diff=changes(_snapshot(budget), {})
    )
    record_config_change("budget", budget.pk, cause=event)
    budget.delete()


@transaction.atomic
def set_price(
    *,
    actor: Actor,
    deployment: Deployment,
    input_per_mtok,
    output_per_mtok,
    cached_input_per_mtok=0,
    effective_from: datetime | None = None,
) -> Price:
    """A deployment's price from `effective_from` (default now). Past spend is never repriced:
    the ledger keeps what each request cost when it ran."""
    effective_from = effective_from or timezone.now()
    if timezone.is_naive(effective_from):
        raise ValidationError({"effective_from": ["Give the time with its time zone (UTC)."]})
    values = {}
    for field, value in (
        ("input_per_mtok", input_per_mtok),
        ("output_per_mtok", output_per_mtok),
        ("cached_input_per_mtok", cached_input_per_mtok),
    ):
        values[field] = clean_price(value, field)
    if Price.objects.filter(deployment=deployment, effective_from=effective_from).exists():
        raise ValidationError({"effective_from": ["A price already starts at this moment."]})
    price = Price.objects.create(
        org_id=deployment.org_id, deployment=deployment, effective_from=effective_from, **values
    )
    event = record_event(
        actor=actor,
        org=deployment.org,
        action="price.set",
        target=deployment,
        diff={name: {"after": str(value)} for name, value in values.items()}
        | {"effective_from": {"after": effective_from.isoformat()}},
    )
    record_config_change("deployment", deployment.pk, cause=event)
    return price


@transaction.atomic
def set_cost_center(*, actor: Actor, team: Team, cost_center: str) -> Team:
    """The code chargeback reports group a team's spend under."""
    team = Team.objects.select_for_update().get(pk=team.pk)
    cost_center = cost_center.strip()
    if len(cost_center) > 64 or any(ord(c) < 32 for c in cost_center):
        raise ValidationError({"cost_center": ["Use up to 64 printable characters."]})
    if team.cost_center != cost_center:
        diff = changes({"cost_center": team.cost_center}, {"cost_center": cost_center})
        team.cost_center = cost_center
        team.save(update_fields=["cost_center"])
        record_event(actor=actor, org=team.org, action="team.cost_center_changed", target=team, diff=diff)
    return team

"""SLA policies: each change with its audit event and config change in one transaction.

A policy is the org's default (no team) or one team's override. Every rule is checked here, so
the pages and the API answer the same errors, keyed by field.
"""

from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.context import Actor
from audit.services import changes, record_event
from budgets.services import clean_targets
from fleet.changes import record_config_change
from keys.models import Provider
from orgs.models import Organization, Team

from .models import REGIONS, ModelRoute, SlaPolicy

REGION_CODES = [code for code, _label in REGIONS]
RETRY_CONDITIONS = ["timeout", "429", "5xx"]
MAX_RETRIES = 5

# field -> (lowest, highest, how people read the bounds)
BOUNDS: dict[str, tuple[int, int, str]] = {
    "connect_timeout_ms": (100, 60_000, "from 100 ms to 60 s (60000 ms)"),
    "first_token_timeout_ms": (100, 600_000, "from 100 ms to 10 minutes (600000 ms)"),
    "total_timeout_ms": (1_000, 3_600_000, "from 1 s (1000 ms) to 1 hour (3600000 ms)"),
    "max_retries": (0, MAX_RETRIES, f"from 0 to {MAX_RETRIES}"),
    "backoff_base_ms": (10, 10_000, "from 10 ms to 10 s (10000 ms)"),
    "backoff_max_ms": (10, 60_000, "from 10 ms to 60 s (60000 ms)"),
    "breaker_failure_rate": (1, 100, "from 1 to 100 percent"),
    "breaker_window_seconds": (10, 3_600, "from 10 s to 1 hour (3600 s)"),
    "breaker_min_requests": (1, 1_000, "from 1 to 1000"),
    "breaker_cooldown_seconds": (1, 3_600, "from 1 s to 1 hour (3600 s)"),
    "slo_p95_latency_ms": (1, 600_000, "from 1 ms to 10 minutes (600000 ms)"),
    "slo_p95_ttft_ms": (1, 600_000, "from 1 ms to 10 minutes (600000 ms)"),
    "slo_window_days": (1, 90, "from 1 to 90 days"),
}
SLO_AVAILABILITY_MIN, SLO_AVAILABILITY_MAX = Decimal(50), Decimal("99.999")

# Every setting a policy holds besides its org, team and name, as the services take them.
POLICY_FIELDS = (
    "strategy",
    "route_strategies",
    "connect_timeout_ms",
    "first_token_timeout_ms",
    "total_timeout_ms",
    "max_retries",
    "retry_on",
    "backoff_base_ms",
    "backoff_max_ms",
    "breaker_failure_rate",
    "breaker_window_seconds",
    "breaker_min_requests",
    "breaker_cooldown_seconds",
    "allowed_providers",
    "allowed_regions",
    "slo_availability",
    "slo_p95_latency_ms",
    "slo_p95_ttft_ms",
    "slo_window_days",
    "alert_emails",
    "alert_webhooks",
)


def policy_settings(policy: SlaPolicy) -> dict:
    """The settings of `policy` as the services take them: what an edit starts from."""
    return {
        field: list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
        for field in POLICY_FIELDS
        for value in [getattr(policy, field)]
    }


def default_settings() -> dict:
    """The model's defaults: a new policy's starting point."""
    return policy_settings(SlaPolicy())


def _integer(value, field: str, errors: dict) -> int | None:
    low, high, text = BOUNDS[field]
    if isinstance(value, bool):
        value = None
    try:
        number = int(value)
    except (TypeError, ValueError):
        errors[field] = ["Enter a whole number."]
        return None
    if number != value and not isinstance(value, str):
        errors[field] = ["Enter a whole number."]
        return None
    if not low <= number <= high:
        errors[field] = [f"Use a value {text}."]
        return None
    return number


def _choices(values, allowed: list[str], field: str, noun: str, errors: dict) -> list[str]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        errors[field] = [f"Give a list of {noun}s."]
        return []
    unknown = [str(value) for value in values if value not in allowed]
    if unknown:
        errors[field] = [f"Unknown {noun}: {', '.join(unknown[:5])}. Use any of: {', '.join(allowed)}."]
        return []
    return list(dict.fromkeys(values))


def _availability(value, errors: dict) -> Decimal | None:
    try:
        percent = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        errors["slo_availability"] = ["Enter a percentage, e.g. 99.9."]
        return None
    if not percent.is_finite() or not SLO_AVAILABILITY_MIN <= percent <= SLO_AVAILABILITY_MAX:
        errors["slo_availability"] = ["Use a percentage from 50 to 99.999."]
        return None
    if percent.as_tuple().exponent < -3:
        errors["slo_availability"] = ["Use at most 3 decimal places."]
        return None
    return percent.quantize(Decimal("0.001"))


def _route_strategies(org: Organization, value, errors: dict) -> dict[str, str]:
    if not isinstance(value, dict):
        errors["route_strategies"] = ["Give an object mapping route aliases to strategies."]
        return {}
    known = set(ModelRoute.objects.filter(org=org, alias__in=[str(a) for a in value]).values_list("alias", flat=True))
    problems = []
    unknown_aliases = [str(alias) for alias in value if alias not in known]
    if unknown_aliases:
        problems.append(f"No route with the alias {', '.join(sorted(unknown_aliases)[:5])}.")
    bad = sorted({str(s) for s in value.values() if s not in SlaPolicy.Strategy.values})
    if bad:
        problems.append(f"Unknown strategy {', '.join(bad[:5])}; use one of: {', '.join(SlaPolicy.Strategy.values)}.")
    if problems:
        errors["route_strategies"] = problems
        return {}
    return dict(sorted(value.items()))


def _clean_settings(org: Organization, values: dict) -> dict:
    """Every setting checked at once, so a form shows all its errors in one answer."""
    errors: dict[str, list[str]] = {}
    cleaned: dict = {}
    if values["strategy"] not in SlaPolicy.Strategy.values:
        errors["strategy"] = [f"Use one of: {', '.join(SlaPolicy.Strategy.values)}."]
    cleaned["strategy"] = values["strategy"]
    cleaned["route_strategies"] = _route_strategies(org, values["route_strategies"], errors)
    for field in BOUNDS:
        cleaned[field] = _integer(values[field], field, errors)
    connect, first, total = (cleaned[f] for f in ("connect_timeout_ms", "first_token_timeout_ms", "total_timeout_ms"))
    if connect is not None and first is not None and connect > first:
        errors.setdefault("first_token_timeout_ms", []).append(
            "The time to first token includes connecting: make it at least the connect timeout."
        )
    if first is not None and total is not None and first > total:
        errors.setdefault("total_timeout_ms", []).append(
            "The total timeout includes the time to first token: make it at least that long."
        )
    base, most = cleaned["backoff_base_ms"], cleaned["backoff_max_ms"]
    if base is not None and most is not None and base > most:
        errors.setdefault("backoff_max_ms", []).append("Make the longest backoff at least the first one.")
    cleaned["retry_on"] = _choices(values["retry_on"], RETRY_CONDITIONS, "retry_on", "retry condition", errors)
    cleaned["allowed_providers"] = _choices(
        values["allowed_providers"], list(Provider.values), "allowed_providers", "provider", errors
    )
    cleaned["allowed_regions"] = _choices(values["allowed_regions"], REGION_CODES, "allowed_regions", "region", errors)
    cleaned["slo_availability"] = _availability(values["slo_availability"], errors)
    try:
        emails, webhooks = clean_targets(list(values["alert_emails"]), list(values["alert_webhooks"]))
    except ValidationError as error:
        for name, messages in error.message_dict.items():
            errors.setdefault(f"alert_{name}", []).extend(messages)
    else:
        cleaned["alert_emails"], cleaned["alert_webhooks"] = emails, webhooks
    if errors:
        raise ValidationError(errors)
    return cleaned


def routes_left_without_deployments(org: Organization, allowed_providers, allowed_regions) -> list[str]:
    """The aliases of the org's routes that these provider and region lists would leave with no
    deployment (routes that have none to begin with are not this policy's doing)."""
    if not allowed_providers and not allowed_regions:
        return []
    left: dict[str, bool] = {}
    rows = ModelRoute.objects.filter(org=org).values_list(
        "alias", "targets__deployment__region", "targets__deployment__credential__provider"
    )
    for alias, region, provider in rows:
        if region is None:
            continue
        allowed = (not allowed_regions or region in allowed_regions) and (
            not allowed_providers or provider in allowed_providers
        )
        left[alias] = left.get(alias, False) or allowed
    return sorted(alias for alias, any_left in left.items() if not any_left)


def _check_leaves_deployments(org: Organization, cleaned: dict) -> None:
    stranded = routes_left_without_deployments(org, cleaned["allowed_providers"], cleaned["allowed_regions"])
    if stranded:
        shown = ", ".join(stranded[:10]) + (f" and {len(stranded) - 10} more" if len(stranded) > 10 else "")
        field = "allowed_regions" if cleaned["allowed_regions"] else "allowed_providers"
        raise ValidationError(
            {field: [f"This would leave no deployment for the routes {shown}: allow their providers and regions."]}
        )


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError({"name": ["Give the policy a name of 1 to 100 characters."]})
    return name


def _snapshot(policy: SlaPolicy) -> dict:
    values = policy_settings(policy)
    values["slo_availability"] = str(policy.slo_availability)
    return {"name": policy.name, "team": str(policy.team_id) if policy.team_id else None, **values}


def _merged(given: dict, base: dict) -> dict:
    unknown = set(given) - set(POLICY_FIELDS)
    if unknown:
        raise TypeError(f"unknown policy settings: {sorted(unknown)}")
    return {**base, **given}


@transaction.atomic
def create_policy(*, actor: Actor, org: Organization, name: str, team: Team | None = None, **settings) -> SlaPolicy:
    """The org's default SLA policy (no team) or a team's override; unnamed settings keep their defaults."""
    name = _clean_name(name)
    if team is not None and team.org_id != org.pk:
        raise ValidationError({"team": ["No such team."]})
    if team is None and SlaPolicy.objects.filter(org=org, team=None).exists():
        raise ValidationError({"team": ["The organization has a default policy already: edit it, or choose a team."]})
    if team is not None and SlaPolicy.objects.filter(team=team).exists():
        raise ValidationError({"team": [f"The team “{team.name}” has a policy already: edit it instead."]})
    cleaned = _clean_settings(org, _merged(settings, default_settings()))
    _check_leaves_deployments(org, cleaned)
    policy = SlaPolicy.objects.create(org=org, team=team, name=name, **cleaned)
    event = record_event(
        actor=actor, org=org, action="policy.created", target=policy, diff=changes({}, _snapshot(policy))
    )
    record_config_change("policy", policy.pk, cause=event)
    return policy


@transaction.atomic
def update_policy(*, actor: Actor, policy: SlaPolicy, name: str | None = None, **settings) -> SlaPolicy:
    """Change a policy's name or settings; settings not named keep their values. Its team cannot change."""
    policy = SlaPolicy.objects.select_for_update(of=("self",)).select_related("org", "team").get(pk=policy.pk)
    before = _snapshot(policy)
    name = _clean_name(policy.name if name is None else name)
    cleaned = _clean_settings(policy.org, _merged(settings, policy_settings(policy)))
    _check_leaves_deployments(policy.org, cleaned)
    policy.name = name
    for field, value in cleaned.items():
        setattr(policy, field, value)
    diff = changes(before, _snapshot(policy))
    if diff:
        policy.save()
        event = record_event(actor=actor, org=policy.org, action="policy.updated", target=policy, diff=diff)
        record_config_change("policy", policy.pk, cause=event)
    return policy


@transaction.atomic
def delete_policy(*, actor: Actor, policy: SlaPolicy) -> None:
    """Remove a policy: its team falls back to the org default, the org default to built-in defaults."""
    policy = SlaPolicy.objects.select_for_update().select_related("org").get(pk=policy.pk)
    event = record_event(
        actor=actor, org=policy.org, action="policy.deleted", target=policy, diff=changes(_snapshot(policy), {})
    )
    record_config_change("policy", policy.pk, cause=event)
    policy.delete()

"""Explain a route: for a caller key and a model alias, which deployments the gateway may use,
in which order, and why the others are left out (policy, credential, circuit breaker).

Breaker states are each worker's own; they arrive with the heartbeats (the `breakers` field of
each node's hash), so what is shown is what the fleet last reported.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import redis
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q

from budgets.models import Price
from fleet.redis_client import redis_client, redis_keys
from keys.models import CallerKey, ProviderCredential
from orgs.models import Organization

from .models import ModelRoute, RouteTarget, SlaPolicy

STALE_AFTER_SECONDS = 120  # a worker silent this long no longer speaks for the fleet
LATENCY_NOTE = "ordered by each worker's observed latency; no data yet: priority order"

# node id -> deployment id -> {"state": "open" | "half_open" | "closed", "until": unix seconds}
BreakerStates = dict[str, dict[str, dict]]


@dataclass
class ExplainRow:
    deployment: object
    provider: str
    region: str
    priority: int  # 1 = first choice of the route
    eligible: bool
    reason: str
    order: int | None = None  # the place the strategy gives it, 1 first; None when not eligible
    detail: str = ""  # the strategy's reading: a weight share, a price, a note
    weight_percent: Decimal | None = None
    price: tuple[Decimal, Decimal] | None = field(default=None, repr=False)


def effective_policy(org: Organization, key: CallerKey | None) -> SlaPolicy | None:
    """The key's team's policy, else the org's default, else None (the gateway's built-in
    defaults). Without a key: the org's default."""
    team_id = key.team_id if key is not None else None
    policies = {p.team_id: p for p in SlaPolicy.objects.filter(Q(team=None) | Q(team_id=team_id), org=org)}
    return policies.get(team_id) or policies.get(None)


def strategy_for(policy: SlaPolicy | None, alias: str) -> str:
    if policy is None:
        return SlaPolicy.Strategy.PRIORITY
    return policy.route_strategies.get(alias, policy.strategy)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_breaker_states(*, now: float | None = None) -> BreakerStates:
    """Every live worker's reported breakers; empty when Redis cannot be reached or none report."""
    now = time.time() if now is None else now
    client, keys = redis_client(), redis_keys()
    try:
        members = client.zrangebyscore(keys.nodes, now - STALE_AFTER_SECONDS, "+inf")
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.hget(keys.node(_text(member)), "breakers")
        values = pipe.execute() if members else []
    except redis.RedisError:
        return {}
    states: BreakerStates = {}
    for member, value in zip(members, values, strict=True):
        try:
            parsed = json.loads(value) if value else {}
        except (ValueError, UnicodeDecodeError):
            parsed = {}
        states[_text(member)] = parsed if isinstance(parsed, dict) else {}
    return states


def _moment(seconds) -> str:
    try:
        return datetime.fromtimestamp(float(seconds), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"


def _breaker_reason(deployment_id: str, states: BreakerStates, now: float) -> tuple[bool, str]:
    """(eligible, reason) from the workers' breakers: out only while every reporting worker has it open."""
    if not states:
        return True, ""
    open_until = []
    half_open = 0
    for breakers in states.values():
        state = breakers.get(deployment_id)
        if not isinstance(state, dict):
            continue
        until = state.get("until")
        if state.get("state") == "open" and isinstance(until, int | float) and until > now:
            open_until.append(until)
        elif state.get("state") in {"open", "half_open"}:
            half_open += 1
    if open_until and len(open_until) == len(states):
        return False, f"circuit open until {_moment(max(open_until))}"
    if open_until:
        return True, f"circuit open on {len(open_until)} of {len(states)} workers until {_moment(max(open_until))}"
    if half_open:
        return True, f"circuit half-open on {half_open} of {len(states)} workers: trial requests only"
    return True, ""


def _current_prices(targets: list[RouteTarget], now: datetime) -> dict:
    """deployment id -> (input, output) USD per million tokens: the newest Price in effect, else
    the deployment's own prices."""
    prices = {t.deployment_id: (t.deployment.input_price_per_mtok, t.deployment.output_price_per_mtok) for t in targets}
    rows = (
        Price.objects.filter(deployment_id__in=list(prices), effective_from__lte=now)
        .order_by("deployment_id", "-effective_from")
        .distinct("deployment_id")
        .values_list("deployment_id", "input_per_mtok", "output_per_mtok")
    )
    for deployment_id, input_price, output_price in rows:
        prices[deployment_id] = (input_price, output_price)
    return prices


def _money(value: Decimal) -> str:
    text = f"{value:.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{int(whole):,}.{decimals.ljust(2, '0')}"


def _teams_by_credential(targets: list[RouteTarget]) -> dict:
    """credential id -> the teams it is restricted to (absent: every team may use it)."""
    through = ProviderCredential.teams.through
    teams: dict = {}
    credential_ids = {t.deployment.credential_id for t in targets}
    for credential_id, team_id in through.objects.filter(providercredential_id__in=credential_ids).values_list(
        "providercredential_id", "team_id"
    ):
        teams.setdefault(credential_id, set()).add(team_id)
    return teams


def _eligibility(deployment, policy, key, teams, states, now) -> tuple[bool, str]:
    credential = deployment.credential
    if policy is not None and policy.allowed_providers and credential.provider not in policy.allowed_providers:
        return False, "excluded by provider policy"
    if policy is not None and policy.allowed_regions and deployment.region not in policy.allowed_regions:
        return False, "excluded by region policy"
    if key is not None and credential.pk in teams and key.team_id not in teams[credential.pk]:
        return False, "credential restricted to other teams"
    eligible, breaker = _breaker_reason(str(deployment.pk), states, now)
    if not eligible:
        return False, breaker
    return True, f"eligible; {breaker}" if breaker else "eligible"


def _order(rows: list[ExplainRow], targets: list[RouteTarget], strategy: str) -> None:
    """Number the eligible rows in the order `strategy` would try them, with what it reads."""
    eligible = [(row, target) for row, target in zip(rows, targets, strict=True) if row.eligible]
    if strategy == SlaPolicy.Strategy.WEIGHTED:
        total = sum(target.weight for _row, target in eligible)
        for row, target in eligible:
            share = Decimal(target.weight * 100) / total if total else Decimal(0)
            row.weight_percent = share.quantize(Decimal("0.1"))
            row.detail = f"weight {target.weight}: {row.weight_percent}% of requests"
        eligible.sort(key=lambda pair: (-pair[1].weight, pair[1].priority))
    elif strategy == SlaPolicy.Strategy.COST:
        prices = _current_prices([target for _row, target in eligible], datetime.now(tz=UTC))
        for row, target in eligible:
            row.price = prices[target.deployment_id]
            row.detail = f"${_money(row.price[0])} in, ${_money(row.price[1])} out per 1M tokens"
        eligible.sort(key=lambda pair: (sum(pair[0].price), pair[1].priority))
    elif strategy == SlaPolicy.Strategy.LATENCY:
        for row, _target in eligible:
            row.detail = LATENCY_NOTE
    else:
        for row, target in eligible:
            row.detail = f"choice {target.priority + 1}"
    for place, (row, _target) in enumerate(eligible, start=1):
        row.order = place


def explain_route(
    org: Organization, key: CallerKey | None, alias: str, breaker_states: BreakerStates | None = None
) -> list[ExplainRow]:
    """One row per deployment of the route `alias`, in the route's priority order: whether a
    request with `key` may reach it, why, and the place the policy's strategy gives it. Without
    a key, for the org's default policy and no team (credential restrictions are not judged)."""
    if key is not None and key.org_id != org.pk:
        raise ValidationError({"key": ["No such key."]})
    targets_in_order = Prefetch(
        "targets", queryset=RouteTarget.objects.select_related("deployment__credential").order_by("priority")
    )
    route = ModelRoute.objects.filter(org=org, alias=alias).prefetch_related(targets_in_order).first()
    if route is None:
        raise ValidationError({"alias": ["No route with this alias."]})
    targets = list(route.targets.all())
    policy = effective_policy(org, key)
    now = time.time()
    states = read_breaker_states(now=now) if breaker_states is None else breaker_states
    teams = _teams_by_credential(targets)
    rows = []
    for target in targets:
        deployment = target.deployment
        eligible, reason = _eligibility(deployment, policy, key, teams, states, now)
        rows.append(
            ExplainRow(
                deployment=deployment,
                provider=deployment.credential.provider,
                region=deployment.region,
                priority=target.priority + 1,
                eligible=eligible,
                reason=reason,
            )
        )
    _order(rows, targets, strategy_for(policy, alias))
    return rows

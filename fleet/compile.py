"""Compile the gateway config (gateway/config.py's schema) from PostgreSQL.

`compile_entity` builds one entity's current value, or None when it is gone (or, for a caller
key, revoked): a delta costs the same whatever the size of the org. `compile_all` streams
every entity for a full snapshot.
"""

import base64
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal

from django.conf import settings

from gateway.config import MICROS_PER_DOLLAR, decode_raw_key, seal_for_gateway
from keys.models import CallerKey, ProviderCredential
from keys.services import open_secret
from orgs.models import Organization, Team
from sla.models import Deployment, ModelRoute


def gateway_key() -> bytes:
    return decode_raw_key(settings.GATEHOUSE_GATEWAY_KEY, "GATEHOUSE_GATEWAY_KEY")


def micros(price: Decimal) -> int:
    return int((price * MICROS_PER_DOLLAR).to_integral_value(rounding=ROUND_CEILING))


def org_value(org: Organization) -> dict:
    return {
        "slug": org.slug,
        "budget_fail_open": org.budget_fail_open,
        "rate_limit_fail_open": org.rate_limit_fail_open,
        "capture_key": base64.b64encode(bytes(org.capture_public_key)).decode(),
        "capture_max_bytes": org.capture_max_bytes,
    }


def team_value(team: Team) -> dict:
    return {
        "org_id": str(team.org_id),
        "allowed_models": sorted(team.allowed_models),
        "rpm_limit": team.rpm_limit,
        "tpm_limit": team.tpm_limit,
        "capture": team.captures(),
    }


def key_value(key: CallerKey) -> dict | None:
    if key.revoked_at is not None:
        return None
    return {
        "key_id": str(key.pk),
        "org_id": str(key.org_id),
        "team_id": str(key.team_id),
        "prefix": key.prefix,
        "allowed_models": sorted(key.allowed_models),
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "expires_at": key.expires_at.timestamp() if key.expires_at else None,
    }


def credential_value(credential: ProviderCredential, team_ids: list[str], key: bytes) -> dict:
    return {
        "org_id": str(credential.org_id),
        "provider": credential.provider,
        "base_url": credential.base_url,
        "azure_endpoint": credential.azure_endpoint,
        "azure_api_version": credential.azure_api_version,
        # Vertex AI (region, project) and Bedrock (region, access_key_id, role_arn); empty elsewhere.
        "region": credential.region,
        "project": credential.project,
        "access_key_id": credential.access_key_id,
        "role_arn": credential.role_arn,
        "team_ids": sorted(team_ids),
        # The provider's one secret: API key, service-account key file or AWS secret access key.
        "sealed_api_key": seal_for_gateway(key, open_secret(credential), credential_id=str(credential.pk)),
    }


def deployment_value(deployment: Deployment, catalog: list | None = None) -> dict:
    """The deployment's own price applies from the start; catalog prices from their dates, so
    a future price change needs no publish on its day. No price at all: an empty list."""
    catalog = list(deployment.prices.all()) if catalog is None else catalog
    prices = []
    if deployment.input_price_per_mtok or deployment.output_price_per_mtok:
        prices.append([0, micros(deployment.input_price_per_mtok), micros(deployment.output_price_per_mtok), 0])
    for price in sorted(catalog, key=lambda p: p.effective_from):
        prices.append(
            [
                price.effective_from.timestamp(),
                micros(price.input_per_mtok),
                micros(price.output_per_mtok),
                micros(price.cached_input_per_mtok),
            ]
        )
    return {
        "org_id": str(deployment.org_id),
        "credential_id": str(deployment.credential_id),
        "upstream_model": deployment.upstream_model,
        "max_output_tokens": deployment.max_output_tokens,
        "prices": prices,
        "region": deployment.region,
    }


def budget_value(budget) -> dict:
    scope_id = {"org": budget.org_id, "team": budget.team_id, "key": budget.key_id}[budget.scope]
    return {
        "org_id": str(budget.org_id),
        "name": budget.name,
        "scope": budget.scope,
        "scope_id": str(scope_id),
        "amount_micros": micros(budget.amount),
        "period": budget.period,
        "hard": budget.hard,
    }


def route_value(route: ModelRoute, targets: list) -> dict | None:
    """`targets` are the route's RouteTargets in priority order."""
    if not targets:
        return None  # a route with nothing behind it does not exist for callers
    return {
        "org_id": str(route.org_id),
        "alias": route.alias,
        "deployment_ids": [str(target.deployment_id) for target in targets],
        "weights": [target.weight for target in targets],
    }


def policy_value(policy) -> dict:
    return {
        "org_id": str(policy.org_id),
        "team_id": str(policy.team_id) if policy.team_id else "",
        "strategy": policy.strategy,
        "route_strategies": dict(policy.route_strategies or {}),
        "connect_timeout_ms": policy.connect_timeout_ms,
        "first_token_timeout_ms": policy.first_token_timeout_ms,
        "total_timeout_ms": policy.total_timeout_ms,
        "max_retries": policy.max_retries,
        "retry_on": sorted(policy.retry_on),
        "backoff_base_ms": policy.backoff_base_ms,
        "backoff_max_ms": policy.backoff_max_ms,
        "breaker_failure_rate": policy.breaker_failure_rate,
        "breaker_window_seconds": policy.breaker_window_seconds,
        "breaker_min_requests": policy.breaker_min_requests,
        "breaker_cooldown_seconds": policy.breaker_cooldown_seconds,
        "allowed_providers": sorted(policy.allowed_providers),
        "allowed_regions": sorted(policy.allowed_regions),
    }


def compile_entity(entity_type: str, entity_id: str) -> dict | None:
    if entity_type == "org":
        org = Organization.objects.filter(pk=entity_id).first()
        return org_value(org) if org else None
    if entity_type == "team":
        team = Team.objects.select_related("org").filter(pk=entity_id).first()
        return team_value(team) if team else None
    if entity_type == "key":
        key = CallerKey.objects.filter(digest=entity_id).first()
        return key_value(key) if key else None
    if entity_type == "credential":
        credential = ProviderCredential.objects.filter(pk=entity_id).first()
        if credential is None:
            return None
        team_ids = [str(pk) for pk in credential.teams.values_list("pk", flat=True)]
        return credential_value(credential, team_ids, gateway_key())
    if entity_type == "deployment":
        deployment = Deployment.objects.filter(pk=entity_id).first()
        return deployment_value(deployment) if deployment else None
    if entity_type == "budget":
        from budgets.models import Budget

        budget = Budget.objects.filter(pk=entity_id).first()
        return budget_value(budget) if budget else None
    if entity_type == "route":
        route = ModelRoute.objects.filter(pk=entity_id).first()
        if route is None:
            return None
        return route_value(route, list(route.targets.order_by("priority")))
    if entity_type == "policy":
        from sla.models import SlaPolicy

        policy = SlaPolicy.objects.filter(pk=entity_id).first()
        return policy_value(policy) if policy else None
    raise ValueError(f"unknown entity type {entity_type!r}")


def compile_all() -> Iterator[tuple[str, str, dict]]:
    """(type, id, value) for every entity the gateway needs, in a fixed order."""
    for org in Organization.objects.order_by("pk"):
        yield "org", str(org.pk), org_value(org)
    for team in Team.objects.select_related("org").order_by("pk"):
        yield "team", str(team.pk), team_value(team)
    keys = CallerKey.objects.filter(revoked_at=None).order_by("pk")
    for key in keys.iterator(chunk_size=5000):
        yield "key", key.digest, key_value(key)
    secret_key = gateway_key()
    for credential in ProviderCredential.objects.prefetch_related("teams").order_by("pk"):
        team_ids = [str(team.pk) for team in credential.teams.all()]
        yield "credential", str(credential.pk), credential_value(credential, team_ids, secret_key)
    for deployment in Deployment.objects.prefetch_related("prices").order_by("pk"):
        yield "deployment", str(deployment.pk), deployment_value(deployment, list(deployment.prices.all()))
    for route in ModelRoute.objects.prefetch_related("targets").order_by("pk"):
        value = route_value(route, sorted(route.targets.all(), key=lambda t: t.priority))
        if value is not None:
            yield "route", str(route.pk), value
    from budgets.models import Budget

    for budget in Budget.objects.order_by("pk"):
        yield "budget", str(budget.pk), budget_value(budget)
    from sla.models import SlaPolicy

    for policy in SlaPolicy.objects.order_by("pk"):
        yield "policy", str(policy.pk), policy_value(policy)

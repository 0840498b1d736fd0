"""Deployments and model routes: each change with its audit event and config change."""

from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.context import Actor
from audit.services import changes, record_event
from fleet.changes import record_config_change
from keys.models import ProviderCredential
from orgs.models import Organization

from .models import REGIONS, Deployment, ModelRoute, RouteTarget

MAX_PRICE_PER_MTOK = Decimal(10_000)  # USD per million tokens; anything above is a typo
MAX_TARGETS = 10
MAX_WEIGHT = 1000
REGION_CODES = [code for code, _label in REGIONS]


def _price(value, field: str) -> Decimal:
    try:
        price = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationError({field: ["Enter a number of dollars, e.g. 2.50."]}) from None
    if not price.is_finite() or price < 0 or price > MAX_PRICE_PER_MTOK:
        raise ValidationError({field: [f"Use a price from 0 to {MAX_PRICE_PER_MTOK:,} dollars per million tokens."]})
    if price.as_tuple().exponent < -6:
        raise ValidationError({field: ["Use at most 6 decimal places."]})
    # As stored (6 places), so resending "2.5" for a stored 2.500000 is not a change.
    return price.quantize(Decimal("0.000001"))


def _deployment_snapshot(deployment: Deployment) -> dict:
    return {
        "name": deployment.name,
        "credential": str(deployment.credential_id),
        "upstream_model": deployment.upstream_model,
        "input_price_per_mtok": str(deployment.input_price_per_mtok),
        "output_price_per_mtok": str(deployment.output_price_per_mtok),
        "region": deployment.region,
    }


def _region(region: str) -> str:
    if region not in REGION_CODES:
        raise ValidationError(
            {"region": [f"Unknown region {str(region)[:40]!r}. Use one of: {', '.join(REGION_CODES)}."]}
        )
    return region


@transaction.atomic
def create_deployment(
    *,
    actor: Actor,
    org: Organization,
    name: str,
    credential: ProviderCredential,
    upstream_model: str,
    input_price_per_mtok,
    output_price_per_mtok,
    region: str | None = "global",
) -> Deployment:
    """A provider credential plus an upstream model and its prices."""
    if credential.org_id != org.pk:
        raise ValidationError({"credential": ["No such credential."]})
    name, upstream_model = name.strip(), upstream_model.strip()
    if not upstream_model:
        raise ValidationError({"upstream_model": ["Name the provider's model, e.g. gpt-4o."]})
    if Deployment.objects.filter(org=org, name__iexact=name).exists():
        raise ValidationError({"name": ["A deployment with this name already exists."]})
    deployment = Deployment.objects.create(
        org=org,
        name=name,
        credential=credential,
        upstream_model=upstream_model,
        input_price_per_mtok=_price(input_price_per_mtok, "input_price_per_mtok"),
        output_price_per_mtok=_price(output_price_per_mtok, "output_price_per_mtok"),
        region=_region(region or "global"),
    )
    event = record_event(
        actor=actor,
        org=org,
        action="deployment.created",
        target=deployment,
        diff=changes({}, _deployment_snapshot(deployment)),
    )
    record_config_change("deployment", deployment.pk, cause=event)
    return deployment


@transaction.atomic
def update_deployment(
    *,
    actor: Actor,
    deployment: Deployment,
    name: str,
    upstream_model: str,
    input_price_per_mtok,
    output_price_per_mtok,
    region: str | None = None,
) -> Deployment:
    """Rename a deployment or change its upstream model, prices or region (None keeps it)."""
    deployment = Deployment.objects.select_for_update().select_related("org").get(pk=deployment.pk)
    name, upstream_model = name.strip(), upstream_model.strip()
    if not upstream_model:
        raise ValidationError({"upstream_model": ["Name the provider's model, e.g. gpt-4o."]})
    if Deployment.objects.filter(org_id=deployment.org_id, name__iexact=name).exclude(pk=deployment.pk).exists():
        raise ValidationError({"name": ["A deployment with this name already exists."]})
    before = _deployment_snapshot(deployment)
    deployment.name, deployment.upstream_model = name, upstream_model
    deployment.input_price_per_mtok = _price(input_price_per_mtok, "input_price_per_mtok")
    deployment.output_price_per_mtok = _price(output_price_per_mtok, "output_price_per_mtok")
    if region is not None:
        deployment.region = _region(region)
    diff = changes(before, _deployment_snapshot(deployment))
    if diff:
        deployment.save()
        event = record_event(actor=actor, org=deployment.org, action="deployment.updated", target=deployment, diff=diff)
        record_config_change("deployment", deployment.pk, cause=event)
    return deployment


@transaction.atomic
def delete_deployment(*, actor: Actor, deployment: Deployment) -> None:
    """Remove a deployment; refused while a route sends traffic to it."""
    routes = list(ModelRoute.objects.filter(targets__deployment=deployment).values_list("alias", flat=True)[:5])
    if routes:
        raise ValidationError({"deployment": [f"Routes use this deployment: {', '.join(routes)}. Change them first."]})
    event = record_event(
        actor=actor,
        org=deployment.org,
        action="deployment.deleted",
        target=deployment,
        diff=changes(_deployment_snapshot(deployment), {}),
    )
    record_config_change("deployment", deployment.pk, cause=event)
    deployment.delete()


def _clean_alias(alias: str) -> str:
    alias = alias.strip()
    if not alias or len(alias) > 100 or any(c.isspace() or ord(c) < 32 for c in alias):
        raise ValidationError({"alias": ["Use 1 to 100 characters without spaces, e.g. gpt-4o or claude-sonnet."]})
    return alias


def _check_targets(org: Organization, deployments: list[Deployment]) -> None:
    if not deployments:
        raise ValidationError({"deployments": ["A route needs at least one deployment."]})
    if len(deployments) > MAX_TARGETS:
        raise ValidationError({"deployments": [f"At most {MAX_TARGETS} deployments per route."]})
    if any(d.org_id != org.pk for d in deployments):
        raise ValidationError({"deployments": ["No such deployment."]})
    if len({d.pk for d in deployments}) != len(deployments):
        raise ValidationError({"deployments": ["A deployment appears twice."]})


def _clean_weights(deployments: list[Deployment], weights) -> list[int]:
    """One weight per deployment for the weighted strategy: 0 to MAX_WEIGHT, not all zero."""
    if weights is None:
        return [1] * len(deployments)
    weights = list(weights)
    if len(weights) != len(deployments):
        raise ValidationError({"weights": ["Give one weight per deployment, in the same order."]})
    if any(isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= MAX_WEIGHT for w in weights):
        raise ValidationError({"weights": [f"Each weight is a whole number from 0 to {MAX_WEIGHT}."]})
    if sum(weights) == 0:
        raise ValidationError({"weights": ["The weights sum to zero: give at least one deployment a weight above 0."]})
    return weights


def _set_targets(route: ModelRoute, deployments: list[Deployment], weights: list[int]) -> None:
    route.targets.all().delete()
    RouteTarget.objects.bulk_create(
        [
            RouteTarget(route=route, deployment=d, priority=i, weight=w)
            for i, (d, w) in enumerate(zip(deployments, weights, strict=True))
        ]
    )


@transaction.atomic
def create_route(
    *,
    actor: Actor,
    org: Organization,
    alias: str,
    deployments: list[Deployment],
    description: str = "",
    weights: list[int] | None = None,
) -> ModelRoute:
    """A model alias callers use, served by `deployments` in priority order (`weights`: 1 each)."""
    alias = _clean_alias(alias)
    if ModelRoute.objects.filter(org=org, alias=alias).exists():
        raise ValidationError({"alias": ["A route with this alias already exists."]})
    _check_targets(org, deployments)
    weights = _clean_weights(deployments, weights)
    route = ModelRoute.objects.create(org=org, alias=alias, description=description.strip())
    _set_targets(route, deployments, weights)
    event = record_event(
        actor=actor,
        org=org,
        action="route.created",
        target=route,
        diff={
            "alias": {"after": alias},
            "deployments": {"after": [d.name for d in deployments]},
            "weights": {"after": weights},
        },
    )
    record_config_change("route", route.pk, cause=event)
    return route


@transaction.atomic
def update_route(
    *,
    actor: Actor,
    route: ModelRoute,
    deployments: list[Deployment],
    description: str = "",
    weights: list[int] | None = None,
) -> ModelRoute:
    """Change a route's deployments (in priority order), their weights or the description."""
    route = ModelRoute.objects.select_for_update().select_related("org").get(pk=route.pk)
    _check_targets(route.org, deployments)
    current = list(route.targets.select_related("deployment"))
    if weights is None:  # deployments that stay keep their weight
        kept = {t.deployment_id: t.weight for t in current}
        weights = [kept.get(d.pk, 1) for d in deployments]
    weights = _clean_weights(deployments, weights)
    before = {
        "deployments": [t.deployment.name for t in current],
        "weights": [t.weight for t in current],
        "description": route.description,
    }
    route.description = description.strip()
    route.save(update_fields=["description"])
    _set_targets(route, deployments, weights)
    after = {"deployments": [d.name for d in deployments], "weights": weights, "description": route.description}
    diff = changes(before, after)
    if diff:
        event = record_event(actor=actor, org=route.org, action="route.updated", target=route, diff=diff)
        record_config_change("route", route.pk, cause=event)
    return route


@transaction.atomic
def delete_route(*, actor: Actor, route: ModelRoute) -> None:
    """Remove a model alias; callers using it get model_not_allowed."""
    event = record_event(
        actor=actor, org=route.org, action="route.deleted", target=route, diff={"alias": {"before": route.alias}}
    )
    record_config_change("route", route.pk, cause=event)
    route.delete()

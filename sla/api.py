"""Deployments, model routes and SLA policies over the API:
/api/v1/orgs/<org_slug>/{deployments,routes,sla-policies}/ and /routes/<id>/explain/.

One view per route, one method per operation, its serializers beside it. Every method checks
access first (orgs/access.py: routes.read to read, routes.manage to change; sla.read and
sla.manage for policies), validates input, and writes through sla/services.py or
sla/policies.py. Prices and percentages are decimal strings.
"""

from django.core.exceptions import ValidationError
from django.db.models import F, Prefetch, Q
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
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
    description_field,
    found,
    name_field,
    validated,
)
from keys.models import CallerKey, Provider, ProviderCredential
from orgs.access import get_org_access
from orgs.api import TeamReferenceOutput
from orgs.models import Team
from orgs.validators import validate_display_name

from . import policies, services
from .explain import effective_policy, explain_route, strategy_for
from .models import REGIONS, Deployment, ModelRoute, RouteTarget, SlaPolicy


class StrictChoiceField(serializers.ChoiceField):
    """A ChoiceField that refuses numbers and booleans (DRF would read 429 as "429")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


def region_field(**kwargs) -> StrictChoiceField:
    return StrictChoiceField(choices=REGIONS, help_text="Where the provider serves this deployment.", **kwargs)


# Deployments -------------------------------------------------------------------------------


def price_field(help_text: str, **kwargs) -> StrictDecimalField:
    return StrictDecimalField(
        max_digits=12,
        decimal_places=6,
        min_value=0,
        max_value=services.MAX_PRICE_PER_MTOK,
        help_text=help_text,
        **kwargs,
    )


class CredentialReferenceOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    provider = serializers.ChoiceField(choices=Provider.choices)


class DeploymentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    credential = CredentialReferenceOutput()
    upstream_model = serializers.CharField(help_text="The provider's model name.")
    input_price_per_mtok = price_field("USD per million input tokens.")
    output_price_per_mtok = price_field("USD per million output tokens.")
    region = serializers.ChoiceField(choices=REGIONS)
    created_at = serializers.DateTimeField()


def upstream_model_field(**kwargs) -> StrictCharField:
    return StrictCharField(max_length=200, validators=[validate_display_name], **kwargs)


class DeploymentCreateInput(serializers.Serializer):
    name = name_field(100)
    credential = StrictUUIDField(help_text="A provider credential of the org.")
    upstream_model = upstream_model_field(help_text="The provider's model name, e.g. gpt-4o.")
    input_price_per_mtok = price_field('USD per million input tokens, as a string: "2.50".')
    output_price_per_mtok = price_field('USD per million output tokens, as a string: "10.00".')
    region = region_field(required=False, default="global")


class DeploymentUpdateInput(serializers.Serializer):
    name = name_field(100)
    credential = StrictUUIDField(help_text="Cannot change; given, it must match.")
    upstream_model = upstream_model_field()
    input_price_per_mtok = price_field("USD per million input tokens.")
    output_price_per_mtok = price_field("USD per million output tokens.")
    region = region_field()

    def validate_credential(self, value):
        if value != self.context["deployment"].credential_id:
            raise serializers.ValidationError("A deployment's credential cannot change: create a new deployment.")
        return value


def deployments_of(org):
    return Deployment.objects.filter(org=org).select_related("credential").order_by("name", "id")


@extend_schema(tags=["deployments"])
class DeploymentListApi(ListApi):
    @extend_schema(parameters=[SearchQuery], responses=DeploymentOutput(many=True), summary="List deployments")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "routes.read")
        query = validated(SearchQuery, request.query_params)
        deployments = deployments_of(access.org)
        if query.get("q"):
            deployments = deployments.filter(Q(name__icontains=query["q"]) | Q(upstream_model__icontains=query["q"]))
        return self.paginated_response(deployments, DeploymentOutput)

    @extend_schema(
        request=DeploymentCreateInput,
        responses={201: DeploymentOutput},
        summary="Create a deployment: a credential, an upstream model and its prices",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "routes.manage")
        data = validated(DeploymentCreateInput, request.data)
        credential = found(ProviderCredential.objects.filter(org=access.org, pk=data.pop("credential")))
        deployment = services.create_deployment(actor=access.actor, org=access.org, credential=credential, **data)
        body = DeploymentOutput(deployments_of(access.org).get(pk=deployment.pk)).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["deployments"])
class DeploymentDetailApi(BaseApi):
    @extend_schema(responses=DeploymentOutput, summary="Get a deployment")
    def get(self, request, org_slug, deployment_id):
        access = get_org_access(request, org_slug, "routes.read")
        return Response(DeploymentOutput(found(deployments_of(access.org).filter(pk=deployment_id))).data)

    @extend_schema(
        request=DeploymentUpdateInput(partial=True),
        responses=DeploymentOutput,
        summary="Rename a deployment or change its upstream model or prices",
    )
    def patch(self, request, org_slug, deployment_id):
        access = get_org_access(request, org_slug, "routes.manage")
        deployment = found(deployments_of(access.org).filter(pk=deployment_id))
        changes = validated(DeploymentUpdateInput, request.data, partial=True, context={"deployment": deployment})
        changes.pop("credential", None)
        current = {
            "name": deployment.name,
            "upstream_model": deployment.upstream_model,
            "input_price_per_mtok": deployment.input_price_per_mtok,
            "output_price_per_mtok": deployment.output_price_per_mtok,
            "region": deployment.region,
        }
        services.update_deployment(actor=access.actor, deployment=deployment, **{**current, **changes})
        return Response(DeploymentOutput(deployments_of(access.org).get(pk=deployment.pk)).data)

    @extend_schema(request=None, responses={204: None}, summary="Delete a deployment no route uses")
    def delete(self, request, org_slug, deployment_id):
        access = get_org_access(request, org_slug, "routes.manage")
        deployment = found(Deployment.objects.filter(org=access.org, pk=deployment_id).select_related("org"))
        services.delete_deployment(actor=access.actor, deployment=deployment)
        return Response(status=status.HTTP_204_NO_CONTENT)


# Routes ------------------------------------------------------------------------------------


class RouteTargetOutput(serializers.Serializer):
    id = serializers.UUIDField(source="deployment.id")
    name = serializers.CharField(source="deployment.name")
    upstream_model = serializers.CharField(source="deployment.upstream_model")
    region = serializers.CharField(source="deployment.region")
    weight = serializers.IntegerField(help_text="Share of traffic under the weighted strategy.")


class RouteOutput(serializers.Serializer):
    id = serializers.UUIDField()
    alias = serializers.CharField(help_text="The model name callers send.")
    description = serializers.CharField()
    deployments = RouteTargetOutput(source="targets", many=True, help_text="In priority order: first tried first.")
    created_at = serializers.DateTimeField()


def deployment_id_list(**kwargs) -> StrictListField:
    return StrictListField(
        child=StrictUUIDField(),
        max_length=services.MAX_TARGETS,
        help_text="Deployment UUIDs in priority order: first tried first.",
        **kwargs,
    )


def weight_list(**kwargs) -> StrictListField:
    return StrictListField(
        child=StrictIntegerField(min_value=0, max_value=services.MAX_WEIGHT),
        max_length=services.MAX_TARGETS,
        required=False,
        help_text=(
            "One weight per deployment, in the same order, for the weighted strategy: 0 to 1000, "
            "not all 0. Left out: 1 each on create; deployments that stay keep theirs on update."
        ),
        **kwargs,
    )


class RouteCreateInput(serializers.Serializer):
    alias = StrictCharField(max_length=100, help_text="The model name callers send, e.g. gpt-4o; no spaces.")
    description = description_field(300)
    deployments = deployment_id_list()
    weights = weight_list()


class RouteUpdateInput(serializers.Serializer):
    alias = StrictCharField(max_length=100, help_text="Cannot change; given, it must match.")
    description = description_field(300)
    deployments = deployment_id_list()
    weights = weight_list()

    def validate_alias(self, value: str) -> str:
        if value != self.context["route"].alias:
            raise serializers.ValidationError("A route's alias cannot change: create a route with the new alias.")
        return value


def routes_of(org):
    targets = Prefetch("targets", queryset=RouteTarget.objects.select_related("deployment").order_by("priority"))
    return ModelRoute.objects.filter(org=org).prefetch_related(targets).order_by("alias", "id")


def org_deployments(org, ids) -> list[Deployment]:
    """The deployments of `org` with these ids, in this order (repeats kept for the service to
    refuse), or 404 when any is not one."""
    by_id = {d.pk: d for d in Deployment.objects.filter(org=org, pk__in=set(ids))}
    if len(by_id) != len(set(ids)):
        raise Http404("Not found.")
    return [by_id[pk] for pk in ids]


@extend_schema(tags=["routes"])
class RouteListApi(ListApi):
    @extend_schema(parameters=[SearchQuery], responses=RouteOutput(many=True), summary="List model routes")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "routes.read")
        query = validated(SearchQuery, request.query_params)
        routes = routes_of(access.org)
        if query.get("q"):
            routes = routes.filter(Q(alias__icontains=query["q"]) | Q(description__icontains=query["q"]))
        return self.paginated_response(routes, RouteOutput)

    @extend_schema(request=RouteCreateInput, responses={201: RouteOutput}, summary="Create a model route")
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "routes.manage")
        data = validated(RouteCreateInput, request.data)
        deployments = org_deployments(access.org, data["deployments"])
        route = services.create_route(
            actor=access.actor,
            org=access.org,
            alias=data["alias"],
            deployments=deployments,
            description=data.get("description", ""),
            weights=data.get("weights"),
        )
        return Response(RouteOutput(routes_of(access.org).get(pk=route.pk)).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["routes"])
class RouteDetailApi(BaseApi):
    @extend_schema(responses=RouteOutput, summary="Get a model route")
    def get(self, request, org_slug, route_id):
        access = get_org_access(request, org_slug, "routes.read")
        return Response(RouteOutput(found(routes_of(access.org).filter(pk=route_id))).data)

    @extend_schema(
        request=RouteUpdateInput(partial=True),
        responses=RouteOutput,
        summary="Change a route's deployments (in priority order) or description",
    )
    def patch(self, request, org_slug, route_id):
        access = get_org_access(request, org_slug, "routes.manage")
        route = found(routes_of(access.org).filter(pk=route_id))
        changes = validated(RouteUpdateInput, request.data, partial=True, context={"route": route})
        if "deployments" in changes:
            deployments = org_deployments(access.org, changes["deployments"])
        else:
            deployments = [target.deployment for target in route.targets.all()]
        services.update_route(
            actor=access.actor,
            route=route,
            deployments=deployments,
            description=changes.get("description", route.description),
            weights=changes.get("weights"),
        )
        return Response(RouteOutput(routes_of(access.org).get(pk=route.pk)).data)

    @extend_schema(request=None, responses={204: None}, summary="Delete a model route")
    def delete(self, request, org_slug, route_id):
        access = get_org_access(request, org_slug, "routes.manage")
        route = found(ModelRoute.objects.filter(org=access.org, pk=route_id).select_related("org"))
        services.delete_route(actor=access.actor, route=route)
        return Response(status=status.HTTP_204_NO_CONTENT)


# SLA policies ------------------------------------------------------------------------------


class PolicyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    team = TeamReferenceOutput(allow_null=True, help_text="null: the org's default policy.")
    strategy = serializers.ChoiceField(choices=SlaPolicy.Strategy.choices)
    route_strategies = serializers.DictField(
        child=serializers.ChoiceField(choices=SlaPolicy.Strategy.choices),
        help_text="Route alias -> strategy, for routes that do not follow `strategy`.",
    )
    connect_timeout_ms = serializers.IntegerField()
    first_token_timeout_ms = serializers.IntegerField()
    total_timeout_ms = serializers.IntegerField()
    max_retries = serializers.IntegerField()
    retry_on = serializers.ListField(child=serializers.ChoiceField(choices=policies.RETRY_CONDITIONS))
    backoff_base_ms = serializers.IntegerField()
    backoff_max_ms = serializers.IntegerField()
    breaker_failure_rate = serializers.IntegerField(help_text="Percent.")
    breaker_window_seconds = serializers.IntegerField()
    breaker_min_requests = serializers.IntegerField()
    breaker_cooldown_seconds = serializers.IntegerField()
    # Plain strings: the provider and region enums have their home on credentials and deployments.
    allowed_providers = serializers.ListField(
        child=serializers.CharField(), help_text=f"Empty: any. Of: {', '.join(Provider.values)}."
    )
    allowed_regions = serializers.ListField(
        child=serializers.CharField(), help_text=f"Empty: any. Of: {', '.join(policies.REGION_CODES)}."
    )
    slo_availability = StrictDecimalField(max_digits=6, decimal_places=3, help_text='Percent, e.g. "99.900".')
    slo_p95_latency_ms = serializers.IntegerField()
    slo_p95_ttft_ms = serializers.IntegerField()
    slo_window_days = serializers.IntegerField()
    alert_emails = serializers.ListField(child=serializers.EmailField())
    alert_webhooks = serializers.ListField(child=serializers.URLField())
    created_at = serializers.DateTimeField()


def _bounded(field: str) -> StrictIntegerField:
    # The service checks the bounds and says them in words; the schema carries them too.
    low, high, text = policies.BOUNDS[field]
    return StrictIntegerField(required=False, help_text=f"A whole number {text}.", min_value=low, max_value=high)


class PolicySettingsInput(serializers.Serializer):
    """Every setting is optional: on create a missing one takes its default, on update it keeps
    its value. Ranges and cross-field rules are the service's (sla/policies.py)."""

    name = name_field(100)
    strategy = StrictChoiceField(choices=SlaPolicy.Strategy.choices, required=False)
    route_strategies = serializers.DictField(
        child=StrictCharField(), required=False, help_text="Route alias -> strategy."
    )
    connect_timeout_ms = _bounded("connect_timeout_ms")
    first_token_timeout_ms = _bounded("first_token_timeout_ms")
    total_timeout_ms = _bounded("total_timeout_ms")
    max_retries = _bounded("max_retries")
    retry_on = StrictListField(child=StrictCharField(), max_length=3, required=False, help_text="timeout, 429, 5xx.")
    backoff_base_ms = _bounded("backoff_base_ms")
    backoff_max_ms = _bounded("backoff_max_ms")
    breaker_failure_rate = _bounded("breaker_failure_rate")
    breaker_window_seconds = _bounded("breaker_window_seconds")
    breaker_min_requests = _bounded("breaker_min_requests")
    breaker_cooldown_seconds = _bounded("breaker_cooldown_seconds")
    allowed_providers = StrictListField(child=StrictCharField(), max_length=20, required=False)
    allowed_regions = StrictListField(child=StrictCharField(), max_length=20, required=False)
    slo_availability = StrictDecimalField(
        max_digits=6, decimal_places=3, required=False, help_text='Percent from 50 to 99.999, e.g. "99.9".'
    )
    slo_p95_latency_ms = _bounded("slo_p95_latency_ms")
    slo_p95_ttft_ms = _bounded("slo_p95_ttft_ms")
    slo_window_days = _bounded("slo_window_days")
    alert_emails = StrictListField(child=StrictCharField(max_length=254), max_length=20, required=False)
    alert_webhooks = StrictListField(child=StrictCharField(max_length=500), max_length=20, required=False)


class PolicyCreateInput(PolicySettingsInput):
    team = StrictUUIDField(required=False, allow_null=True, help_text="A team of the org; left out: the org default.")


class PolicyUpdateInput(PolicySettingsInput):
    team = StrictUUIDField(required=False, allow_null=True, help_text="Cannot change; given, it must match.")

    def validate_team(self, value):
        if value != self.context["policy"].team_id:
            raise serializers.ValidationError("A policy's team cannot change: create a policy for the other team.")
        return value


def policies_of(org):
    return (
        SlaPolicy.objects.filter(org=org)
        .select_related("team")
        .order_by(F("team__name").asc(nulls_first=True), "name", "id")
    )


@extend_schema(tags=["sla-policies"])
class PolicyListApi(ListApi):
    @extend_schema(responses=PolicyOutput(many=True), summary="List SLA policies: the org default and team overrides")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "sla.read")
        return self.paginated_response(policies_of(access.org), PolicyOutput)

    @extend_schema(request=PolicyCreateInput, responses={201: PolicyOutput}, summary="Create an SLA policy")
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "sla.manage")
        data = dict(validated(PolicyCreateInput, request.data))
        team_id = data.pop("team", None)
        team = None
        if team_id is not None:
            team = Team.objects.filter(org=access.org, pk=team_id).first()
            if team is None:
                raise ValidationError({"team": ["No such team."]})
        policy = policies.create_policy(actor=access.actor, org=access.org, team=team, **data)
        return Response(PolicyOutput(policies_of(access.org).get(pk=policy.pk)).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["sla-policies"])
class PolicyDetailApi(BaseApi):
    @extend_schema(responses=PolicyOutput, summary="Get an SLA policy")
    def get(self, request, org_slug, policy_id):
        access = get_org_access(request, org_slug, "sla.read")
        return Response(PolicyOutput(found(policies_of(access.org).filter(pk=policy_id))).data)

    @extend_schema(
        request=PolicyUpdateInput(partial=True), responses=PolicyOutput, summary="Change an SLA policy's settings"
    )
    def patch(self, request, org_slug, policy_id):
        access = get_org_access(request, org_slug, "sla.manage")
        policy = found(policies_of(access.org).filter(pk=policy_id))
        changes = dict(validated(PolicyUpdateInput, request.data, partial=True, context={"policy": policy}))
        changes.pop("team", None)
        policies.update_policy(actor=access.actor, policy=policy, **changes)
        return Response(PolicyOutput(policies_of(access.org).get(pk=policy.pk)).data)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Delete an SLA policy (a team falls back to the org default, the default to built-in defaults)",
    )
    def delete(self, request, org_slug, policy_id):
        access = get_org_access(request, org_slug, "sla.manage")
        policy = found(SlaPolicy.objects.filter(org=access.org, pk=policy_id))
        policies.delete_policy(actor=access.actor, policy=policy)
        return Response(status=status.HTTP_204_NO_CONTENT)


# Explain a route -----------------------------------------------------------------------------


class ExplainQuery(serializers.Serializer):
    key = serializers.UUIDField(
        required=False,
        help_text="A caller key of the org: its team decides the policy. Left out: the org's default "
        "policy, without judging credentials restricted to some teams.",
    )


class ExplainDeploymentOutput(serializers.Serializer):
    id = serializers.UUIDField(source="deployment.id")
    name = serializers.CharField(source="deployment.name")
    provider = serializers.ChoiceField(choices=Provider.choices)
    region = serializers.CharField()
    priority = serializers.IntegerField(help_text="Its place in the route: 1 is the first choice.")
    eligible = serializers.BooleanField()
    reason = serializers.CharField(
        help_text="eligible, excluded by region policy, excluded by provider policy, "
        "credential restricted to other teams, or circuit open until <time>."
    )
    order = serializers.IntegerField(
        allow_null=True, help_text="The strategy's order, 1 first; null when not eligible."
    )
    detail = serializers.CharField(help_text="What the strategy reads: a weight share, a price, a note.")
    weight_percent = serializers.DecimalField(max_digits=4, decimal_places=1, allow_null=True, coerce_to_string=True)


class ExplainOutput(serializers.Serializer):
    route = serializers.CharField(help_text="The route's alias.")
    key = serializers.UUIDField(allow_null=True)
    policy = serializers.UUIDField(allow_null=True, help_text="null: the gateway's built-in defaults apply.")
    strategy = serializers.ChoiceField(choices=SlaPolicy.Strategy.choices)
    deployments = ExplainDeploymentOutput(many=True, help_text="In the route's priority order.")


@extend_schema(tags=["routes"])
class RouteExplainApi(BaseApi):
    @extend_schema(
        parameters=[ExplainQuery],
        responses=ExplainOutput,
        summary="Which deployments a key's requests for this route may reach, in which order, and why",
    )
    def get(self, request, org_slug, route_id):
        access = get_org_access(request, org_slug, "routes.read")
        route = found(ModelRoute.objects.filter(org=access.org, pk=route_id))
        query = validated(ExplainQuery, request.query_params)
        key = None
        if "key" in query:
            key = CallerKey.objects.filter(org=access.org, pk=query["key"]).first()
            if key is None:
                raise ValidationError({"key": ["No key of this organization has this ID."]})
        rows = explain_route(access.org, key, route.alias)
        policy = effective_policy(access.org, key)
        body = {
            "route": route.alias,
            "key": key.pk if key else None,
            "policy": policy.pk if policy else None,
            "strategy": strategy_for(policy, route.alias),
            "deployments": rows,
        }
        return Response(ExplainOutput(body).data)

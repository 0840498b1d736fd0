"""Deployments and model routes over the API: /api/v1/orgs/<org_slug>/{deployments,routes}/.

One view per route, one method per operation, its serializers beside it. Every method checks
access first (orgs/access.py: routes.read to read, routes.manage to change), validates input,
and writes through sla/services.py. Prices are decimal strings in USD per million tokens.
"""

from django.db.models import Prefetch, Q
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
    StrictListField,
    StrictUUIDField,
    description_field,
    found,
    name_field,
    validated,
)
from keys.models import Provider, ProviderCredential
from orgs.access import get_org_access
from orgs.validators import validate_display_name

from . import services
from .models import Deployment, ModelRoute, RouteTarget

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
    created_at = serializers.DateTimeField()


def upstream_model_field(**kwargs) -> StrictCharField:
    return StrictCharField(max_length=200, validators=[validate_display_name], **kwargs)


class DeploymentCreateInput(serializers.Serializer):
    name = name_field(100)
    credential = StrictUUIDField(help_text="A provider credential of the org.")
    upstream_model = upstream_model_field(help_text="The provider's model name, e.g. gpt-4o.")
    input_price_per_mtok = price_field('USD per million input tokens, as a string: "2.50".')
    output_price_per_mtok = price_field('USD per million output tokens, as a string: "10.00".')


class DeploymentUpdateInput(serializers.Serializer):
    name = name_field(100)
    credential = StrictUUIDField(help_text="Cannot change; given, it must match.")
    upstream_model = upstream_model_field()
    input_price_per_mtok = price_field("USD per million input tokens.")
    output_price_per_mtok = price_field("USD per million output tokens.")

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


class RouteCreateInput(serializers.Serializer):
    alias = StrictCharField(max_length=100, help_text="The model name callers send, e.g. gpt-4o; no spaces.")
    description = description_field(300)
    deployments = deployment_id_list()


class RouteUpdateInput(serializers.Serializer):
    alias = StrictCharField(max_length=100, help_text="Cannot change; given, it must match.")
    description = description_field(300)
    deployments = deployment_id_list()

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
        )
        return Response(RouteOutput(routes_of(access.org).get(pk=route.pk)).data)

    @extend_schema(request=None, responses={204: None}, summary="Delete a model route")
    def delete(self, request, org_slug, route_id):
        access = get_org_access(request, org_slug, "routes.manage")
        route = found(ModelRoute.objects.filter(org=access.org, pk=route_id).select_related("org"))
        services.delete_route(actor=access.actor, route=route)
        return Response(status=status.HTTP_204_NO_CONTENT)

"""Deployment, model route and SLA policy routes of the API, under /api/v1/ (names: api:sla:<name>)."""

from django.urls import path

from . import api

app_name = "sla"

org = "orgs/<slug:org_slug>"

urlpatterns = [
    path(f"{org}/deployments/", api.DeploymentListApi.as_view(), name="deployment-list"),
    path(f"{org}/deployments/<uuid:deployment_id>/", api.DeploymentDetailApi.as_view(), name="deployment-detail"),
    path(f"{org}/routes/", api.RouteListApi.as_view(), name="route-list"),
    path(f"{org}/routes/<uuid:route_id>/", api.RouteDetailApi.as_view(), name="route-detail"),
    path(f"{org}/routes/<uuid:route_id>/explain/", api.RouteExplainApi.as_view(), name="route-explain"),
    path(f"{org}/sla-policies/", api.PolicyListApi.as_view(), name="policy-list"),
    path(f"{org}/sla-policies/<uuid:policy_id>/", api.PolicyDetailApi.as_view(), name="policy-detail"),
]

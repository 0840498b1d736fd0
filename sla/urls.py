from django.urls import path

from . import views

app_name = "sla"

org = "orgs/<slug:org_slug>/"
deployment = org + "deployments/<uuid:deployment_id>/"
route = org + "routes/<uuid:route_id>/"
policy = org + "sla-policies/<uuid:policy_id>/"

urlpatterns = [
    path(org + "deployments/", views.deployment_list, name="deployment_list"),
    path(deployment, views.deployment_detail, name="deployment_detail"),
    path(deployment + "delete/", views.deployment_delete, name="deployment_delete"),
    path(org + "routes/", views.route_list, name="route_list"),
    path(route, views.route_detail, name="route_detail"),
    path(route + "delete/", views.route_delete, name="route_delete"),
    path(route + "explain/", views.route_explain, name="route_explain"),
    path(org + "sla-policies/", views.policy_list, name="policy_list"),
    path(policy, views.policy_detail, name="policy_detail"),
    path(policy + "delete/", views.policy_delete, name="policy_delete"),
]

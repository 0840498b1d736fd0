"""Budget, price and spend routes of the API, under /api/v1/ (names: api:budgets:<name>)."""

from django.urls import path

from . import api

app_name = "budgets"

org = "orgs/<slug:org_slug>"

urlpatterns = [
    path(f"{org}/budgets/", api.BudgetListApi.as_view(), name="budget-list"),
    path(f"{org}/budgets/<uuid:budget_id>/", api.BudgetDetailApi.as_view(), name="budget-detail"),
    path(f"{org}/prices/", api.PriceListApi.as_view(), name="price-list"),
    path(f"{org}/spend/", api.SpendApi.as_view(), name="spend"),
    path(f"{org}/teams/<uuid:team_id>/cost-center/", api.TeamCostCenterApi.as_view(), name="team-cost-center"),
    path(f"{org}/settings/budget-fail-open/", api.BudgetFailOpenApi.as_view(), name="budget-fail-open"),
]

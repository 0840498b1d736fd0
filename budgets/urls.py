from django.urls import path

from . import dead_letter_views, views

app_name = "budgets"

urlpatterns = [
    path("orgs/<slug:org_slug>/usage/", views.usage, name="usage"),
    path("orgs/<slug:org_slug>/budgets/", views.budget_list, name="budget_list"),
    path("orgs/<slug:org_slug>/budgets/<uuid:budget_id>/", views.budget_detail, name="budget_detail"),
    path("orgs/<slug:org_slug>/budgets/<uuid:budget_id>/delete/", views.budget_delete, name="budget_delete"),
    path("orgs/<slug:org_slug>/budgets/<uuid:budget_id>/reconcile/", views.budget_reconcile, name="budget_reconcile"),
    path("orgs/<slug:org_slug>/prices/", views.price_list, name="price_list"),
    path("orgs/<slug:org_slug>/finance/", views.finance, name="finance"),
    path("orgs/<slug:org_slug>/finance/chargeback/", views.chargeback, name="chargeback"),
    path("orgs/<slug:org_slug>/teams/<uuid:team_id>/cost-center/", views.cost_center, name="cost_center"),
    # Platform staff only, like the fleet pages: no org in the path.
    path("usage/dead-letters/", dead_letter_views.dead_letter_list, name="dead_letter_list"),
    path("usage/dead-letters/replay/", dead_letter_views.dead_letter_replay, name="dead_letter_replay"),
    path("usage/dead-letters/purge/", dead_letter_views.dead_letter_purge, name="dead_letter_purge"),
]

"""SLO report and model leaderboard pages (names: slo:reports, slo:leaderboard). Their own
namespace: a second include under "sla" would be shadowed by sla/urls.py."""

from django.urls import path

from . import report_views

app_name = "slo"

urlpatterns = [
    path("orgs/<slug:org_slug>/sla-reports/", report_views.report, name="reports"),
    path("orgs/<slug:org_slug>/models/leaderboard/", report_views.leaderboard, name="leaderboard"),
]

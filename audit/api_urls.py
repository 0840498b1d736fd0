"""Audit routes of the API, under /api/v1/ (names: api:audit:<name>)."""

from django.urls import include, path

from . import api

app_name = "audit"

urlpatterns = [
    path("orgs/<slug:org_slug>/audit-events/", api.AuditEventListApi.as_view(), name="event-list"),
    path("", include("audit.export_api_urls")),
    path("", include("audit.integrity_api")),
]

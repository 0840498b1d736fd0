"""Audit export API routes, included from audit/api_urls.py so their names are api:audit:<name>."""

from django.urls import path

from . import export_views

urlpatterns = [
    path("orgs/<slug:org_slug>/audit-events/export", export_views.AuditExportApi.as_view(), name="export"),
    path(
        "orgs/<slug:org_slug>/audit-exports/<uuid:export_id>/",
        export_views.AuditExportJobApi.as_view(),
        name="export-job",
    ),
    path(
        "orgs/<slug:org_slug>/audit-exports/<uuid:export_id>/download",
        export_views.AuditExportDownloadApi.as_view(),
        name="export-job-download",
    ),
]

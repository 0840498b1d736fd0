"""Audit export pages, included from audit/urls.py so their names are audit:<name>."""

from django.urls import path

from . import export_views

urlpatterns = [
    path("orgs/<slug:org_slug>/audit/exports/", export_views.export_list, name="export_list"),
    path(
        "orgs/<slug:org_slug>/audit/exports/<uuid:export_id>/download/",
        export_views.export_download,
        name="export_download",
    ),
]

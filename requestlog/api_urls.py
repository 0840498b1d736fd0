"""Request log routes of the API, under /api/v1/ (names: api:requestlog:<name>)."""

from django.urls import path

from . import api

app_name = "requestlog"

org = "orgs/<slug:org_slug>"

urlpatterns = [
    path(f"{org}/requests/", api.RequestListApi.as_view(), name="request-list"),
    path(f"{org}/requests/export/", api.RequestExportApi.as_view(), name="request-export"),
    path(f"{org}/requests/<str:request_id>/", api.RequestDetailApi.as_view(), name="request-detail"),
    path(f"{org}/requests/<str:request_id>/content/", api.RequestContentApi.as_view(), name="request-content"),
]

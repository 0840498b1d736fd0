"""Fleet routes of the API, under /api/v1/fleet/ (names: api:fleet:<name>). Platform staff only."""

from django.urls import path

from . import api

app_name = "fleet"

urlpatterns = [
    path("fleet/nodes/", api.NodeListApi.as_view(), name="node-list"),
    path("fleet/revisions/", api.RevisionListApi.as_view(), name="revision-list"),
    path("fleet/revisions/<int:number>/diff/", api.RevisionDiffApi.as_view(), name="revision-diff"),
    path("fleet/revisions/<int:number>/rollback/", api.RevisionRollbackApi.as_view(), name="revision-rollback"),
    path("fleet/republish/", api.RepublishApi.as_view(), name="republish"),
]

from django.urls import path

from . import api

urlpatterns = [
    path("orgs/<slug:org_slug>/audit-events/", api.AuditEventListApi.as_view(), name="api-audit-events"),
]

"""Every API route, under /api/v1/. Org-scoped routes are /api/v1/orgs/<org_slug>/..."""

from django.urls import include, path

urlpatterns = [
    path("", include("orgs.api_urls")),
    path("", include("audit.api_urls")),
]

"""Every API route, under /api/v1/, named api:<app>:<name>. Org-scoped routes are
/api/v1/orgs/<org_slug>/...; the fleet's, for platform staff, /api/v1/fleet/..."""

from django.urls import include, path

# Registers the OpenAPI description of bearer tokens before any schema is generated.
from . import api  # noqa: F401

app_name = "api"

urlpatterns = [
    path("", include("orgs.api_urls")),
    path("", include("audit.api_urls")),
    path("", include("keys.api_urls")),
    path("", include("sla.api_urls")),
    path("", include("sla.report_api")),
    path("", include("budgets.api_urls")),
    path("", include("fleet.api_urls")),
    path("", include("requestlog.api_urls")),
]

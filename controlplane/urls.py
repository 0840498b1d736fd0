from django.contrib import admin
from django.http import Http404
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from .health import healthz, readyz
from .metrics import metrics

handler404 = "controlplane.health.not_found"
handler500 = "controlplane.health.failed"


def email_change_disabled(request):
    # With email verification off, changing one's address would let a person claim invitations
    # sent to an address they do not own. Admins change emails instead.
    raise Http404("Email addresses are managed by your organization's admins.")


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("accounts/email/", email_change_disabled, name="account_email"),
    path("accounts/", include("allauth.urls")),
    path("staff/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("controlplane.api_urls")),
    path("", include("orgs.urls")),
    path("", include("audit.urls")),
    path("", include("sla.urls")),
    path("", include("sla.report_urls")),
    path("", include("fleet.urls")),
    path("", include("budgets.urls")),
    path("", include("keys.urls")),
    path("", include("playground.urls")),
    path("", include("requestlog.urls")),
    path("", include("capture.urls")),
]

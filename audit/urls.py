from django.urls import include, path

from . import views

app_name = "audit"

urlpatterns = [
    path("orgs/<slug:org_slug>/audit/", views.event_list, name="list"),
    path("orgs/<slug:org_slug>/audit/<uuid:event_uuid>/", views.event_detail, name="event_detail"),
    path("", include("audit.export_urls")),
    path("", include("audit.integrity_urls")),
]

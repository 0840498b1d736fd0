from django.urls import path

from . import views

app_name = "capture"

org = "orgs/<slug:org_slug>"

urlpatterns = [
    path(f"{org}/settings/capture/", views.capture_settings, name="settings"),
    path(f"{org}/settings/capture/teams/<uuid:team_id>/", views.team_capture, name="team"),
]

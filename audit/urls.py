from django.urls import path

from . import views

app_name = "audit"

urlpatterns = [
    path("orgs/<slug:org_slug>/audit/", views.event_list, name="list"),
]

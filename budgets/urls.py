from django.urls import path

from . import views

app_name = "budgets"

urlpatterns = [
    path("orgs/<slug:org_slug>/usage/", views.usage, name="usage"),
]

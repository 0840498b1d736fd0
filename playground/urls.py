from django.urls import path

from . import views

app_name = "playground"

org = "orgs/<slug:org_slug>/"

urlpatterns = [
    path(org + "playground/", views.playground, name="page"),
    path(org + "playground/key/", views.mint_key, name="mint_key"),
]

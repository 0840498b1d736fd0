from django.urls import path

from . import views

app_name = "fleet"

revision = "fleet/revisions/<int:number>/"

urlpatterns = [
    path("fleet/", views.node_list, name="node_list"),
    path("fleet/revisions/", views.revision_list, name="revision_list"),
    path(revision + "diff/", views.revision_diff, name="revision_diff"),
    path(revision + "rollback/", views.rollback, name="rollback"),
    path("fleet/republish/", views.republish, name="republish"),
]

from django.urls import path

from . import views

app_name = "requestlog"

org = "orgs/<slug:org_slug>"

urlpatterns = [
    path(f"{org}/requests/", views.request_list, name="list"),
    # Before the detail route: gateway request ids are hex, never "export".
    path(f"{org}/requests/export/", views.request_export, name="export"),
    path(f"{org}/requests/<str:request_id>/", views.request_detail, name="detail"),
    path(f"{org}/requests/<str:request_id>/content/", views.request_content, name="content"),
]

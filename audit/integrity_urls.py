from django.urls import path

from . import integrity_views

urlpatterns = [
    path("orgs/<slug:org_slug>/audit/integrity/", integrity_views.integrity, name="integrity"),
    path("orgs/<slug:org_slug>/audit/integrity/verify/", integrity_views.verify, name="verify"),
]

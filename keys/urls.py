from django.urls import path

from . import views

app_name = "keys"

org = "orgs/<slug:org_slug>/"
key = org + "keys/<uuid:key_id>/"
credential = org + "credentials/<uuid:credential_id>/"

urlpatterns = [
    path(org + "keys/", views.key_list, name="list"),
    path(org + "keys/new/", views.key_create, name="create"),
    path(org + "keys/bulk-revoke/", views.key_bulk_revoke, name="bulk_revoke"),
    path(key, views.key_detail, name="detail"),
    path(key + "rotate/", views.key_rotate, name="rotate"),
    path(key + "revoke/", views.key_revoke, name="revoke"),
    path(org + "credentials/", views.credential_list, name="credential_list"),
    path(org + "credentials/new/", views.credential_create, name="credential_create"),
    path(credential, views.credential_detail, name="credential_detail"),
    path(credential + "delete/", views.credential_delete, name="credential_delete"),
    path(credential + "test/", views.credential_test, name="credential_test"),
]

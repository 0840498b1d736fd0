"""Caller key and provider credential routes of the API, under /api/v1/ (names: api:keys:<name>)."""

from django.urls import path

from . import api

app_name = "keys"

org = "orgs/<slug:org_slug>"

urlpatterns = [
    path(f"{org}/keys/", api.KeyListApi.as_view(), name="key-list"),
    path(f"{org}/keys/bulk-revoke/", api.KeyBulkRevokeApi.as_view(), name="key-bulk-revoke"),
    path(f"{org}/keys/<uuid:key_id>/", api.KeyDetailApi.as_view(), name="key-detail"),
    path(f"{org}/keys/<uuid:key_id>/rotate/", api.KeyRotateApi.as_view(), name="key-rotate"),
    path(f"{org}/keys/<uuid:key_id>/revoke/", api.KeyRevokeApi.as_view(), name="key-revoke"),
    path(f"{org}/credentials/", api.CredentialListApi.as_view(), name="credential-list"),
    path(f"{org}/credentials/<uuid:credential_id>/", api.CredentialDetailApi.as_view(), name="credential-detail"),
    path(f"{org}/credentials/<uuid:credential_id>/test/", api.CredentialTestApi.as_view(), name="credential-test"),
]

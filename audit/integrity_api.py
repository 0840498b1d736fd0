"""Verifying the audit chain over the API: POST /api/v1/orgs/<org_slug>/audit-events/verify/."""

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from controlplane.api import BaseApi
from orgs.access import get_org_access

from .integrity import verify_and_record


class VerificationOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField(help_text="Events whose link and hash were checked.")
    first_bad_sequence = serializers.IntegerField(allow_null=True, help_text="Where the chain breaks, if it does.")
    reason = serializers.CharField(allow_blank=True)
    purge = serializers.CharField(allow_blank=True, help_text="Events removed under retention, if any.")


@extend_schema(tags=["audit"])
class AuditVerifyApi(BaseApi):
    @extend_schema(request=None, responses=VerificationOutput, summary="Verify the org's audit hash chain")
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "audit.read")
        result = verify_and_record(actor=access.actor, org=access.org)
        return Response(VerificationOutput(result).data)


urlpatterns = [
    path("orgs/<slug:org_slug>/audit-events/verify/", AuditVerifyApi.as_view(), name="verify"),
]

"""Verifying the audit chain over the API: POST /api/v1/orgs/<org_slug>/audit-events/verify/,
and the signed checkpoints an auditor needs to verify an export offline."""

from django.http import StreamingHttpResponse
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from controlplane.api import BaseApi
from orgs.access import get_org_access

from .integrity import checkpoints_jsonl, verify_and_record


class VerificationOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField(help_text="Events whose link and hash were checked.")
    first_bad_sequence = serializers.IntegerField(allow_null=True, help_text="Where the chain breaks, if it does.")
    reason = serializers.CharField(allow_blank=True)
    purge = serializers.CharField(allow_blank=True, help_text="Events removed under retention, if any.")
    covered_through = serializers.IntegerField(help_text="The newest signed checkpoint's sequence (0: none yet).")
    uncovered = serializers.IntegerField(
        help_text="Events after the newest checkpoint: not covered by a signature yet, so a rewrite of them "
        "would go undetected until the next checkpoint."
    )
    uncovered_since = serializers.DateTimeField(
        allow_null=True, help_text="When the oldest event not covered by a signature was recorded."
    )
    coverage = serializers.CharField(help_text="The same in a sentence.")


@extend_schema(tags=["audit"])
class AuditVerifyApi(BaseApi):
    @extend_schema(request=None, responses=VerificationOutput, summary="Verify the org's audit hash chain")
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "audit.read")
        result = verify_and_record(actor=access.actor, org=access.org)
        return Response(VerificationOutput(result).data)


@extend_schema(tags=["audit"])
class AuditCheckpointsApi(BaseApi):
    """JSON Lines of the org's signed checkpoints: give them with a JSON Lines export and the
    public key (GATEHOUSE_SIGNING_PUBLIC_KEY) to scripts/verify_audit_export.py."""

    @extend_schema(request=None, responses={(200, "application/x-ndjson"): str}, summary="Download signed checkpoints")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "audit.export")
        response = StreamingHttpResponse(checkpoints_jsonl(access.org), content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="{access.org.slug}-audit-checkpoints.jsonl"'
        return response


urlpatterns = [
    path("orgs/<slug:org_slug>/audit-events/verify/", AuditVerifyApi.as_view(), name="verify"),
    path("orgs/<slug:org_slug>/audit-events/checkpoints/", AuditCheckpointsApi.as_view(), name="checkpoints"),
]

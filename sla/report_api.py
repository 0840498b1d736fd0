"""Measured SLOs over the API: GET /api/v1/orgs/<org_slug>/sla-reports/?window=&group_by=&policy=
(sla.read), the figures of the SLO report page, from sla/reports.py. Bad input is a 400."""

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from controlplane.api import BaseApi, validated
from orgs.access import get_org_access

from . import reports


class ReportQuery(serializers.Serializer):
    window = serializers.ChoiceField(choices=list(reports.WINDOWS), default=reports.DEFAULT_WINDOW)
    group_by = serializers.ChoiceField(choices=list(reports.GROUPINGS), default="policy")
    policy = serializers.CharField(
        required=False,
        help_text=f'Only the requests one policy holds: its id, or "{reports.NO_POLICY}" for those no policy holds. '
        "Route and deployment rows are then held to that policy's targets; otherwise to the org default's.",
    )

    def validate_policy(self, value: str) -> str:
        if value != reports.NO_POLICY and reports._as_uuid(value) not in self.context["policies"].by_id:
            raise serializers.ValidationError("No such policy in this organization.")
        return value


class PercentilesOutput(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)


class ErrorCountOutput(serializers.Serializer):
    code = serializers.CharField(help_text="The error code, or http_<status> for an error without one.")
    count = serializers.IntegerField()
    rate = serializers.DecimalField(max_digits=12, decimal_places=6, help_text="Of the row's requests, 0 to 1.")


class ObjectiveOutput(serializers.Serializer):
    name = serializers.ChoiceField(choices=list(reports.OBJECTIVE_LABELS))
    target = serializers.DecimalField(max_digits=12, decimal_places=3)
    measured = serializers.DecimalField(max_digits=16, decimal_places=3, allow_null=True)
    met = serializers.BooleanField(allow_null=True, help_text="Null when nothing was measured.")


RATIO = {"max_digits": 24, "decimal_places": 6, "allow_null": True}


class FiguresOutput(serializers.Serializer):
    key = serializers.CharField(
        allow_null=True, help_text=f'The policy id (or "{reports.NO_POLICY}"), route alias or deployment id.'
    )
    label = serializers.CharField()
    requests = serializers.IntegerField(help_text="Requests; for deployments, upstream attempts.")
    failed = serializers.IntegerField(help_text="Answered with a 5xx status (attempts: also without an answer).")
    availability = serializers.DecimalField(**RATIO, help_text="0 to 1.")
    latency_ms = PercentilesOutput(source="latency")
    ttft_ms = PercentilesOutput(source="ttft")
    errors = ErrorCountOutput(many=True)
    policy_id = serializers.UUIDField(source="targets.pk", allow_null=True, help_text="Whose targets apply.")
    error_budget_remaining = serializers.DecimalField(
        source="budget_remaining", **RATIO, help_text="1 - failed share / allowed share; negative once overspent."
    )
    burn_rate = serializers.DecimalField(**RATIO, help_text="Failed share / allowed share.")
    objectives = ObjectiveOutput(many=True)
    breaches = serializers.ListField(child=serializers.CharField())


class ReportOutput(serializers.Serializer):
    window = serializers.CharField()
    group_by = serializers.CharField()
    policy = serializers.CharField(allow_null=True)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(help_text="Exclusive.")
    rows = FiguresOutput(many=True)


class ReportApi(BaseApi):
    @extend_schema(
        parameters=[ReportQuery],
        responses={200: ReportOutput},
        summary="Measured SLOs by policy, route or deployment",
        description="Availability, latency and time-to-first-token percentiles, errors by code, error budget "
        "and burn rate against the SLA policy's targets, over the last hour, 24 hours, 7 or 30 days. "
        "A request failed when it was answered with a 5xx status.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "sla.read")
        policies = reports.Policies.of(access.org)
        query = validated(ReportQuery, request.query_params, context={"policies": policies})
        start, end = reports.window_bounds(query["window"])
        policy_key = query.get("policy")
        rows = reports.report(access.org, start, end, query["group_by"], policy_key, policies=policies)
        body = {
            "window": query["window"],
            "group_by": query["group_by"],
            "policy": policy_key,
            "start": start,
            "end": end,
            "rows": rows,
        }
        return Response(ReportOutput(body).data)


# Included from controlplane/api_urls.py as api:slo:<name>.
app_name = "slo"

urlpatterns = [path("orgs/<slug:org_slug>/sla-reports/", ReportApi.as_view(), name="reports")]

"""The request log over the API: GET /api/v1/orgs/<org_slug>/requests/ (newest first, in keyset
pages), .../requests/<request_id>/ (one request with its attempts and SLA policy) and
.../requests/export/ (CSV or JSON Lines, streamed).

The filters are RequestFilterForm's (requestlog/forms.py), so the page, the API and exports read
them alike; who sees which requests, and their cost, is requestlog/queries.py's.
"""

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from budgets.api import JsonNegotiation
from capture import services as capture_services
from controlplane.api import BaseApi, validated
from keys.models import Provider
from orgs.access import get_org_access

from .export import EXPORT_LIMIT, FORMATS, export_response
from .forms import RequestFilterForm
from .queries import (
    PAGE_SIZE,
    STATUS_CLASSES,
    Labeller,
    client_details,
    decode_cursor,
    filter_requests,
    find_request,
    keyset_page,
    sla_policy_for,
    viewer_for,
    visible_requests,
)

MAX_LIMIT = 200


# Input -------------------------------------------------------------------------------------


class RequestFilterQuery(serializers.Serializer):
    """The query parameters of RequestFilterForm, for the schema: the form validates them."""

    since = serializers.CharField(
        required=False, help_text="From this ISO date or date-time (UTC), inclusive; default: 24 hours before until."
    )
    until = serializers.CharField(
        required=False, help_text="Until this ISO date (the whole day) or date-time (UTC), inclusive; default: now."
    )
    request_id = serializers.CharField(
        required=False,
        max_length=64,
        help_text="The gateway's x-request-id or the caller's own X-Request-Id, exact; without `since`, all time.",
    )
    key = serializers.UUIDField(required=False, help_text="Requests made with this caller key.")
    team = serializers.UUIDField(required=False, help_text="Requests of this team.")
    user = serializers.UUIDField(required=False, help_text="Requests made with keys this person holds.")
    model = serializers.CharField(required=False, max_length=200, help_text="The model alias the caller asked for.")
    deployment = serializers.UUIDField(required=False, help_text="Requests answered by this deployment.")
    status = serializers.ChoiceField(choices=list(STATUS_CLASSES), required=False, help_text="A status class.")
    error_code = serializers.CharField(
        required=False, max_length=64, help_text="The gateway's error code, e.g. upstream_timeout."
    )


def cursor_field(help_text: str) -> serializers.CharField:
    return serializers.CharField(required=False, allow_blank=True, max_length=200, help_text=help_text)


def validate_cursor_text(value: str):
    if not value:
        return None
    try:
        return decode_cursor(value)
    except ValueError:
        raise serializers.ValidationError("This cursor is not valid: use the one a response gave.") from None


class RequestPageQuery(serializers.Serializer):
    cursor = cursor_field("Continue below this place: the `next_cursor` of the previous page.")
    limit = serializers.IntegerField(
        min_value=1, max_value=MAX_LIMIT, default=PAGE_SIZE, help_text="Requests per page (1-200, default 50)."
    )

    def validate_cursor(self, value):
        return validate_cursor_text(value)


class RequestExportQuery(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(FORMATS), default="csv", help_text="csv or jsonl (JSON Lines).")
    cursor = cursor_field("Start below this place: an X-Next-Cursor or `next_cursor` a response gave.")

    def validate_cursor(self, value):
        return validate_cursor_text(value)


def filters_of(query_params) -> dict:
    filters = RequestFilterForm(query_params)
    if not filters.is_valid():
        raise exceptions.ValidationError({field: list(messages) for field, messages in filters.errors.items()})
    return filters.cleaned_data


# Output ------------------------------------------------------------------------------------


class TeamLabelOutput(serializers.Serializer):
    id = serializers.UUIDField(source="team_id")
    name = serializers.CharField(source="team_name", allow_null=True, help_text="Null once the team is deleted.")


class KeyLabelOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField(allow_null=True, help_text="Null once the key is deleted.")
    prefix = serializers.CharField(allow_null=True)


class KeyOwnerOutput(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()


class DeploymentLabelOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField(allow_null=True, help_text="Null once the deployment is deleted.")
    provider = serializers.ChoiceField(choices=Provider.choices, allow_null=True)


class AttemptCauseOutput(serializers.Serializer):
    status = serializers.IntegerField(help_text="The previous attempt's HTTP status; 0 when it got no answer.")
    error_code = serializers.CharField()
    condition = serializers.CharField(
        allow_null=True,
        help_text="The SLA policy's retry condition that matched: timeout, 429 or 5xx; null if unrecorded.",
    )


class AttemptOutput(serializers.Serializer):
    deployment = DeploymentLabelOutput(allow_null=True)
    provider = serializers.CharField(allow_null=True, help_text="The provider kind the attempt went to, e.g. openai.")
    status = serializers.IntegerField(help_text="The provider's HTTP status; 0 when it gave no answer.")
    error_code = serializers.CharField()
    latency_ms = serializers.FloatField()
    kind = serializers.ChoiceField(
        choices=["first", "retry", "fallback"],
        help_text="retry: the same deployment again; fallback: the next deployment.",
    )
    after = serializers.SerializerMethodField()

    @extend_schema_field(
        AttemptCauseOutput(allow_null=True, help_text="Why: the previous attempt; null for the first.")
    )
    def get_after(self, attempt) -> dict | None:
        if attempt.kind == "first":
            return None
        return {
            "status": attempt.after_status,
            "error_code": attempt.after_error_code,
            "condition": attempt.after_condition,
        }


class RequestOutput(serializers.Serializer):
    request_id = serializers.CharField(help_text="The gateway's id, sent back as x-request-id.")
    client_request_id = serializers.CharField(help_text="The caller's own X-Request-Id; empty if none.")
    occurred_at = serializers.DateTimeField()
    model = serializers.CharField(source="alias", help_text="The model alias the caller asked for.")
    endpoint = serializers.CharField()
    status = serializers.IntegerField(help_text="The HTTP status the caller got.")
    error_code = serializers.CharField()
    stream = serializers.BooleanField()
    team = TeamLabelOutput(source="*")
    key = KeyLabelOutput(source="key_label")
    user = serializers.SerializerMethodField()
    deployment = DeploymentLabelOutput(
        source="deployment_label", allow_null=True, help_text="The deployment that answered; null if none did."
    )
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(
        source="cost_shown",
        max_digits=18,
        decimal_places=6,
        allow_null=True,
        help_text="USD; null where the caller's role may not read this spend.",
    )
    latency_ms = serializers.FloatField()
    ttft_ms = serializers.FloatField(help_text="Time to the first token (to the answer when not streamed).")
    node_id = serializers.CharField(help_text="The gateway worker that served it.")
    attempts = AttemptOutput(source="attempt_list", many=True, help_text="Upstream attempts, in order.")
    client_ip = serializers.SerializerMethodField()
    user_agent = serializers.SerializerMethodField()

    @extend_schema_field(KeyOwnerOutput(allow_null=True, help_text="Whose key it is; null for a service key."))
    def get_user(self, record) -> dict | None:
        key = record.key_label
        return {"id": str(key.owner_uuid), "email": key.owner_email} if key.owner_uuid else None

    @extend_schema_field(serializers.IPAddressField(allow_null=True))
    def get_client_ip(self, record) -> str | None:
        return client_details(record)[0]

    @extend_schema_field(serializers.CharField())
    def get_user_agent(self, record) -> str:
        return client_details(record)[1]


class PolicyLabelOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    team_policy = serializers.SerializerMethodField()

    @extend_schema_field(serializers.BooleanField(help_text="True: the team's own policy; false: the org default."))
    def get_team_policy(self, policy) -> bool:
        return policy.team_id is not None


class RequestDetailOutput(RequestOutput):
    sla_policy = PolicyLabelOutput(
        allow_null=True,
        help_text="The SLA policy that applies to the team's requests now: its own, else the org default.",
    )


class RequestPageOutput(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next (older) page; null on the last page.")
    next_cursor = serializers.CharField(allow_null=True, help_text="The `cursor` of the next page; null on the last.")
    results = RequestOutput(many=True)


# Views -------------------------------------------------------------------------------------


@extend_schema(tags=["requests"])
class RequestListApi(BaseApi):
    @extend_schema(
        operation_id="orgs_requests_list",
        parameters=[RequestFilterQuery, RequestPageQuery],
        responses=RequestPageOutput,
        summary="Gateway requests, newest first",
        description="Owners, admins, finance and auditors read every request of the org; team admins their "
        "teams'; developers those made with their own keys. Without `since` or `request_id`, the last 24 hours. "
        "Pages follow `next_cursor`: they stay put while new requests arrive.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.read")
        viewer = viewer_for(request, access)
        filters = filters_of(request.query_params)
        page_query = validated(RequestPageQuery, request.query_params)
        records = filter_requests(visible_requests(viewer), filters, timezone.now())
        page = keyset_page(records, before=page_query.get("cursor"), size=page_query["limit"])
        Labeller(viewer).label(page.rows)
        next_url = None
        if page.older_than:
            next_url = replace_query_param(request.build_absolute_uri(), "cursor", page.older_than)
        body = {"next": next_url, "next_cursor": page.older_than, "results": page.rows}
        return Response(RequestPageOutput(body).data)


@extend_schema(tags=["requests"])
class RequestDetailApi(BaseApi):
    @extend_schema(
        responses=RequestDetailOutput,
        summary="One gateway request with its attempts",
        description="By the gateway's id (x-request-id). A request the caller may not read answers 404, "
        "as one that does not exist.",
    )
    def get(self, request, org_slug, request_id):
        access = get_org_access(request, org_slug, "org.read")
        viewer = viewer_for(request, access)
        record = find_request(viewer, request_id)
        Labeller(viewer).label([record])
        record.sla_policy = sla_policy_for(access.org, record.team_id)
        return Response(RequestDetailOutput(record).data)


class ContentOutput(serializers.Serializer):
    captured = serializers.BooleanField(help_text="False: nothing was captured for this request (the rest is empty).")
    prompt = serializers.CharField(help_text="The request body as the caller sent it, redacted and cut.")
    answer = serializers.CharField(help_text="The body (or event stream) the caller got, redacted and cut.")
    prompt_cut = serializers.BooleanField(help_text="The prompt was longer than the org's size limit.")
    answer_cut = serializers.BooleanField(help_text="The answer was longer than the org's size limit.")
    redactions = serializers.IntegerField(help_text="How many secrets and org patterns were replaced.")


@extend_schema(tags=["requests"])
class RequestContentApi(BaseApi):
    @extend_schema(
        request=None,
        responses=ContentOutput,
        summary="The captured prompt and answer of one request (audited)",
        description="A POST because every read is recorded in the audit log (request.content_viewed). "
        "For roles that read captured content (owners, admins, auditors; developers for their own keys).",
    )
    def post(self, request, org_slug, request_id):
        access = get_org_access(request, org_slug, "org.read")
        record = find_request(viewer_for(request, access), request_id)
        access.require("content.read")
        content = capture_services.read_content(actor=access.actor, org=access.org, request_id=record.request_id)
        if content is None:
            empty = {"captured": False, "prompt": "", "answer": "", "prompt_cut": False, "answer_cut": False}
            return Response(empty | {"redactions": 0})
        return Response(ContentOutput(vars(content) | {"captured": True}).data)


@extend_schema(tags=["requests"])
class RequestExportApi(BaseApi):
    content_negotiation_class = JsonNegotiation

    @extend_schema(
        parameters=[RequestFilterQuery, RequestExportQuery],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="format=csv: one row per request."),
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description="format=jsonl: one request object per line, as the list gives."
            ),
        },
        summary="Export gateway requests as CSV or JSON Lines, streamed",
        description=f"The requests the same filters select, newest first, at most {EXPORT_LIMIT:,} per export. "
        "When more match, X-Export-Truncated is true and X-Next-Cursor is the `cursor` to continue from.",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.read")
        viewer = viewer_for(request, access)
        filters = filters_of(request.query_params)
        query = validated(RequestExportQuery, request.query_params)
        records = filter_requests(visible_requests(viewer), filters, timezone.now())
        return export_response(viewer, records, query["format"], start=query.get("cursor"))

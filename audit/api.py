"""The audit trail over the API: GET /api/v1/orgs/<org_slug>/audit-events/, newest first."""

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.pagination import BasePagination
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from controlplane.api import BaseApi
from orgs.access import get_org_access

from .filters import filter_events
from .forms import BIGINT_MAX, AuditFilterForm
from .models import AuditEvent


class SequencePageQuery(serializers.Serializer):
    before = serializers.IntegerField(min_value=1, max_value=BIGINT_MAX, required=False)
    limit = serializers.IntegerField(min_value=1, max_value=200, default=50)


class SequencePagination(BasePagination):
    """Keyset pages, newest first: `?before=<sequence>` continues below the previous page, so
    pages stay put while new events arrive and a deep page costs what the first one does."""

    def paginate_queryset(self, queryset, request, view=None):
        query = SequencePageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        limit = query.validated_data["limit"]
        if "before" in query.validated_data:
            queryset = queryset.filter(sequence__lt=query.validated_data["before"])
        rows = list(queryset.order_by("-sequence")[: limit + 1])
        page = rows[:limit]
        self.next_link = None
        if len(rows) > limit:
            self.next_link = replace_query_param(request.build_absolute_uri(), "before", page[-1].sequence)
        return page

    def get_paginated_response(self, data):
        return Response({"next": self.next_link, "results": data})

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["next", "results"],
            "properties": {
                "next": {
                    "type": "string",
                    "format": "uri",
                    "nullable": True,
                    "description": "The next (older) page; null on the last page.",
                },
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": "before",
                "in": "query",
                "required": False,
                "description": "Only events with a lower sequence. The `next` link sets it.",
                "schema": {"type": "integer", "minimum": 1},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "Events per page (1-200, default 50).",
                "schema": {"type": "integer", "minimum": 1, "maximum": 200},
            },
        ]


class AuditEventFilter(serializers.Serializer):
    """The query parameters of AuditFilterForm (audit/forms.py), for the schema only: the form
    validates them, so the page, the API and exports read them the same way."""

    since = serializers.CharField(required=False, help_text="From this ISO date or date-time (UTC), inclusive.")
    until = serializers.CharField(
        required=False, help_text="Until this ISO date (the whole day) or date-time (UTC), inclusive."
    )
    actor = serializers.CharField(required=False, help_text="Part of the actor's label, or its exact id.")
    action = serializers.CharField(
        required=False, help_text="An action (team.created), or a family ending in a dot (member.)."
    )
    target_type = serializers.CharField(required=False, help_text="Only targets of this type, e.g. team.")
    target = serializers.CharField(required=False, help_text="Only events of the target with this id.")
    team = serializers.UUIDField(required=False, help_text="Events of this team and of its keys.")
    ip = serializers.CharField(required=False, help_text="An IP address or a CIDR network.")
    q = serializers.CharField(required=False, help_text="Part of the target's name (at most 200 characters).")


class AuditActorOutput(serializers.Serializer):
    type = serializers.CharField(source="actor_type", help_text="user, token or system")
    id = serializers.CharField(source="actor_id")
    label = serializers.CharField(source="actor_label")


class AuditTargetOutput(serializers.Serializer):
    type = serializers.CharField(source="target_type")
    id = serializers.CharField(source="target_id")
    label = serializers.CharField(source="target_label")


class AuditEventOutput(serializers.Serializer):
    id = serializers.UUIDField(source="uuid")
    sequence = serializers.IntegerField()
    action = serializers.CharField()
    actor = AuditActorOutput(source="*")
    target = AuditTargetOutput(source="*")
    diff = serializers.JSONField()
    ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()
    request_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()


@extend_schema(tags=["audit"])
class AuditEventListApi(BaseApi):
    pagination_class = SequencePagination

    @extend_schema(
        parameters=[AuditEventFilter],
        responses=AuditEventOutput(many=True),
        summary="The org's audit events, newest first",
    )
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "audit.read")
        filters = AuditFilterForm(request.query_params)
        if not filters.is_valid():
            raise exceptions.ValidationError({field: list(messages) for field, messages in filters.errors.items()})
        events = filter_events(AuditEvent.objects.filter(org=access.org), filters.cleaned_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventOutput(page, many=True).data)

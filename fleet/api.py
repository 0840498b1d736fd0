"""The gateway fleet over the API: /api/v1/fleet/. Platform-wide, so for platform staff only
(Django superusers); org roles and API tokens get 403.

Nodes come from their heartbeats in Redis (fleet/selectors.py), revisions from PostgreSQL.
Rollbacks and republishing go through fleet/services.py, which records the audit event.
"""

import redis
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings

from audit.context import Actor
from controlplane.api import BaseApi, ErrorDetail, ListApi, description_field, found, validated

from . import services
from .models import ConfigRevision
from .selectors import STALE_AFTER, fleet_nodes


class IsPlatformStaff(permissions.BasePermission):
    message = "Only platform staff may do this."

    def has_permission(self, request, view) -> bool:
        return bool(getattr(request.user, "is_superuser", False))


STAFF_ONLY = [*api_settings.DEFAULT_PERMISSION_CLASSES, IsPlatformStaff]
BIGINT_MAX = 2**63 - 1


class FleetApi(BaseApi):
    permission_classes = STAFF_ONLY


class FleetListApi(ListApi):
    permission_classes = STAFF_ONLY


def existing_revision(number: int) -> ConfigRevision:
    """The revision numbered `number`, or 404."""
    if number > BIGINT_MAX:
        raise Http404("Not found.")
    return found(ConfigRevision.objects.filter(number=number).only("number"))


class RedisUnreachable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Redis cannot be reached, so the nodes' heartbeats cannot be read. Workers keep serving."


REDIS_UNREACHABLE = OpenApiResponse(ErrorDetail, description="Redis cannot be reached.")
SAVED_BUT_NOT_COPIED = OpenApiResponse(ErrorDetail, description="The revision is saved but not yet copied to Redis.")


class SavedButNotCopied(RedisUnreachable):
    # The services commit the revision before they copy it to Redis: it stands, and the next
    # publish or compaction copies it.
    default_detail = (
        "The revision is saved, but Redis cannot be reached: workers get it when Redis is back "
        "and the next publish or compaction copies it."
    )


def staff_actor(user) -> Actor:
    return Actor(kind="user", id=str(user.uuid), label=user.email, user_id=user.pk)


# Nodes -------------------------------------------------------------------------------------


class NodeOutput(serializers.Serializer):
    node_id = serializers.CharField()
    host = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    revision = serializers.IntegerField(allow_null=True, help_text="The config revision the node runs.")
    config_hash = serializers.CharField()
    lag = serializers.IntegerField(
        allow_null=True, help_text="Revisions behind the newest one in the database; null: the node runs none."
    )
    heartbeat_at = serializers.DateTimeField()
    seconds_since_heartbeat = serializers.FloatField()
    started_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    last_rejected = serializers.CharField(help_text="Why the node last refused a config, if it did.")
    stale = serializers.BooleanField(
        help_text=f"No heartbeat for more than {int(STALE_AFTER.total_seconds() // 60)} minutes."
    )


@extend_schema(tags=["fleet"])
class NodeListApi(FleetListApi):
    @extend_schema(
        responses={200: NodeOutput(many=True), 503: REDIS_UNREACHABLE},
        summary="Gateway nodes by their heartbeats, sorted by node id",
    )
    def get(self, request):
        try:
            nodes = fleet_nodes()
        except redis.RedisError:
            raise RedisUnreachable() from None
        return self.paginated_response(nodes, NodeOutput)


# Revisions ---------------------------------------------------------------------------------


class RevisionOutput(serializers.Serializer):
    number = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=ConfigRevision.Kind.choices)
    sha256 = serializers.CharField()
    size = serializers.IntegerField(help_text="Bytes of the canonical config document.")
    summary = serializers.CharField()
    cause = serializers.UUIDField(
        source="cause.uuid", allow_null=True, help_text="The audit event that caused this revision."
    )
    created_at = serializers.DateTimeField()


def revisions():
    fields = ("number", "kind", "sha256", "size", "summary", "created_at", "cause__uuid")
    return ConfigRevision.objects.select_related("cause").only(*fields).order_by("-number")


def revision_response(revision: ConfigRevision) -> Response:
    return Response(RevisionOutput(revisions().get(pk=revision.pk)).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["fleet"])
class RevisionListApi(FleetListApi):
    @extend_schema(responses=RevisionOutput(many=True), summary="Config revisions, newest first")
    def get(self, request):
        return self.paginated_response(revisions(), RevisionOutput)


class RevisionDiffQuery(serializers.Serializer):
    against = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=BIGINT_MAX,
        help_text="The revision to compare with; default: the one before.",
    )


class EntityChangeOutput(serializers.Serializer):
    type = serializers.CharField(help_text="org, team, key, credential, deployment or route")
    id = serializers.CharField()
    before = serializers.JSONField(allow_null=True, help_text="Null: absent in the older revision.")
    after = serializers.JSONField(allow_null=True, help_text="Null: absent in the newer revision.")


class RevisionDiffOutput(serializers.Serializer):
    revision = serializers.IntegerField()
    against = serializers.IntegerField(allow_null=True, help_text="Null: compared with an empty config.")
    changes = EntityChangeOutput(many=True)


@extend_schema(tags=["fleet"])
class RevisionDiffApi(FleetApi):
    @extend_schema(
        parameters=[RevisionDiffQuery],
        responses=RevisionDiffOutput,
        summary="What differs between two revisions",
        description="Sealed provider secrets show only whether they changed.",
    )
    def get(self, request, number):
        revision = existing_revision(number)
        query = validated(RevisionDiffQuery, request.query_params)
        against = query.get("against")
        if against is None:
            against = (
                ConfigRevision.objects.filter(number__lt=revision.number)
                .order_by("-number")
                .values_list("number", flat=True)
                .first()
            )
        elif not ConfigRevision.objects.filter(number=against).exists():
            raise serializers.ValidationError({"against": [f"There is no revision {against}."]})
        older, newer = sorted((against or 0, revision.number))
        changes = services.diff_revisions(older, newer)
        return Response(RevisionDiffOutput({"revision": revision.number, "against": against, "changes": changes}).data)


@extend_schema(tags=["fleet"])
class RevisionRollbackApi(FleetApi):
    @extend_schema(
        request=None,
        responses={201: RevisionOutput, 503: SAVED_BUT_NOT_COPIED},
        summary="Roll the fleet back to a revision's config",
        description="Publishes a new revision with that revision's content. Caller keys keep their current "
        "state: a rollback never brings a revoked key back.",
    )
    def post(self, request, number):
        existing_revision(number)
        try:
            revision = services.roll_back_to(actor=staff_actor(request.user), number=number)
        except redis.RedisError:
            raise SavedButNotCopied() from None
        return revision_response(revision)


class RepublishInput(serializers.Serializer):
    reason = description_field(300)


@extend_schema(tags=["fleet"])
class RepublishApi(FleetApi):
    @extend_schema(
        request=RepublishInput,
        responses={201: RevisionOutput, 503: SAVED_BUT_NOT_COPIED},
        summary="Recompile every config from the database into a full snapshot",
    )
    def post(self, request):
        data = validated(RepublishInput, request.data)
        try:
            revision = services.republish_all(actor=staff_actor(request.user), reason=data.get("reason", ""))
        except redis.RedisError:
            raise SavedButNotCopied() from None
        return revision_response(revision)

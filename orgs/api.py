"""The org-scoped REST API: /api/v1/orgs/ and /api/v1/orgs/<org_slug>/{teams,members,invitations,api-tokens}/.

One view per route, one method per operation, its serializers beside it. Every method checks
access first (orgs/access.py: outsiders 404, a role too low 403), validates input with a
serializer, and writes through orgs/services.py.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db.models import Count, Q
from drf_spectacular.utils import extend_schema, extend_schema_field
from guardian.shortcuts import get_users_with_perms
from rest_framework import serializers, status
from rest_framework.response import Response

from controlplane.api import (
    BaseApi,
    ListApi,
    SearchQuery,
    ShownOnceOutput,
    StrictCharField,
    StrictIntegerField,
    StrictListField,
    StrictUUIDField,
    description_field,
    found,
    name_field,
    validated,
)

from . import services
from .access import acting_role, get_org_access, get_team_access, token_role, with_creator_role
from .models import ApiToken, Invitation, Membership, Team, TeamMembership, User
from .roles import Role

# People ------------------------------------------------------------------------------------


def user_reference(value: str) -> dict:
    """Lookup arguments for a person named by their user UUID or their email address."""
    try:
        return {"uuid": StrictUUIDField().to_internal_value(value)}
    except serializers.ValidationError:
        pass
    try:
        validate_email(value)
    except DjangoValidationError:
        raise serializers.ValidationError("Give the person's user UUID or email address.") from None
    return {"email__iexact": value}


def org_member(org, reference: dict) -> User:
    """A member of `org` named by user_reference() arguments; 404 for anyone else."""
    return found(User.objects.filter(memberships__org=org, **reference))


# Organizations -----------------------------------------------------------------------------


class OrgOutput(serializers.Serializer):
    id = serializers.UUIDField(source="org.id")
    name = serializers.CharField(source="org.name")
    slug = serializers.SlugField(source="org.slug")
    role = serializers.ChoiceField(choices=Role.choices, help_text="Your role in the organization.")


@extend_schema(tags=["orgs"])
class OrgListApi(ListApi):
    @extend_schema(responses=OrgOutput(many=True), summary="Organizations you belong to (a token: its own)")
    def get(self, request):
        token = request.auth if isinstance(request.auth, ApiToken) else None
        if token is not None:
            # Unsaved: a token's one org and the role it acts as, shaped like a membership.
            rows = [Membership(org=token.org, role=token_role(token))]
        else:
            rows = Membership.objects.filter(user=request.user).select_related("org").order_by("org__name", "org__slug")
        return self.paginated_response(rows, OrgOutput)


# Teams -------------------------------------------------------------------------------------


def teams_of(org):
    return Team.objects.filter(org=org).annotate(member_count=Count("team_memberships")).order_by("name", "id")


class TeamOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.SlugField()
    description = serializers.CharField()
    member_count = serializers.IntegerField()
    allowed_models = serializers.ListField(child=serializers.CharField())
    rpm_limit = serializers.IntegerField(allow_null=True)
    tpm_limit = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


class TeamCreateInput(serializers.Serializer):
    name = name_field(100)
    slug = serializers.SlugField(max_length=50, required=False, allow_blank=True, help_text="Default: from the name.")
    description = description_field(500)


class TeamUpdateInput(serializers.Serializer):
    name = name_field(100)
    description = description_field(500)


@extend_schema(tags=["teams"])
class TeamListApi(ListApi):
    @extend_schema(parameters=[SearchQuery], responses=TeamOutput(many=True), summary="List teams")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "teams.read")
        query = validated(SearchQuery, request.query_params)
        teams = teams_of(access.org)
        if query.get("q"):
            teams = teams.filter(Q(name__icontains=query["q"]) | Q(slug__icontains=query["q"]))
        return self.paginated_response(teams, TeamOutput)

    @extend_schema(request=TeamCreateInput, responses={201: TeamOutput}, summary="Create a team")
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "teams.manage")
        data = validated(TeamCreateInput, request.data)
        team = services.create_team(actor=access.actor, org=access.org, **data)
        return Response(TeamOutput(teams_of(access.org).get(pk=team.pk)).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["teams"])
class TeamDetailApi(BaseApi):
    @extend_schema(responses=TeamOutput, summary="Get a team")
    def get(self, request, org_slug, team_id):
        access = get_org_access(request, org_slug, "teams.read")
        return Response(TeamOutput(found(teams_of(access.org).filter(pk=team_id))).data)

    @extend_schema(
        request=TeamUpdateInput(partial=True), responses=TeamOutput, summary="Rename a team or change its description"
    )
    def patch(self, request, org_slug, team_id):
        access, team = get_team_access(request, org_slug, team_id, "teams.manage")
        serializer = TeamUpdateInput(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = {"name": team.name, "description": team.description, **serializer.validated_data}
        services.update_team(actor=access.actor, team=team, **data)
        return Response(TeamOutput(teams_of(access.org).get(pk=team.pk)).data)

    # Deleting a team takes the org-level capability: a team admin manages the team, not its existence.
    @extend_schema(request=None, responses={204: None}, summary="Delete a team")
    def delete(self, request, org_slug, team_id):
        access = get_org_access(request, org_slug, "teams.manage")
        team = found(Team.objects.filter(org=access.org, pk=team_id))
        services.delete_team(actor=access.actor, team=team)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamLimitsInput(serializers.Serializer):
    allowed_models = StrictListField(
        child=StrictCharField(max_length=100), max_length=100, help_text="Model aliases; empty allows every route."
    )
    # JSON numbers only: "5" is refused, not read as 5.
    rpm_limit = StrictIntegerField(min_value=1, max_value=10_000_000, allow_null=True, help_text="Null: no limit.")
    tpm_limit = StrictIntegerField(min_value=1, max_value=10_000_000, allow_null=True, help_text="Null: no limit.")


class TeamLimitsApi(BaseApi):
    """The ceiling for a team's caller keys. The org-level capability is needed: a team admin
    manages the team's keys within the ceiling, never the ceiling itself."""

    @extend_schema(request=TeamLimitsInput, responses=TeamOutput, summary="Set the limits of a team's keys")
    def put(self, request, org_slug, team_id):
        access = get_org_access(request, org_slug, "teams.manage")
        team = found(Team.objects.filter(org=access.org, pk=team_id))
        serializer = TeamLimitsInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.set_team_limits(actor=access.actor, team=team, **serializer.validated_data)
        return Response(TeamOutput(teams_of(access.org).get(pk=team.pk)).data)


# Team members ------------------------------------------------------------------------------


def team_admin_ids(team: Team) -> set[int]:
    users = get_users_with_perms(
        team, only_with_perms_in=[services.TEAM_ADMIN_CODENAME], with_group_users=False, with_superusers=False
    )
    return set(users.values_list("pk", flat=True))


class TeamMemberOutput(serializers.Serializer):
    user = serializers.UUIDField(source="user.uuid")
    email = serializers.EmailField(source="user.email")
    full_name = serializers.CharField(source="user.full_name")
    team_admin = serializers.SerializerMethodField()
    joined_at = serializers.DateTimeField(source="created_at")

    def get_team_admin(self, link: TeamMembership) -> bool:
        return link.user_id in self.context["admin_ids"]


class TeamMemberAddInput(serializers.Serializer):
    user = StrictCharField(max_length=254, help_text="User UUID or email address of a member of the organization.")
    team_admin = serializers.BooleanField(default=False)

    def validate_user(self, value: str) -> dict:
        return user_reference(value)


class TeamMemberUpdateInput(serializers.Serializer):
    team_admin = serializers.BooleanField()


def team_member_response(team: Team, user: User, **kwargs) -> Response:
    link = TeamMembership.objects.select_related("user").get(team=team, user=user)
    return Response(TeamMemberOutput(link, context={"admin_ids": team_admin_ids(team)}).data, **kwargs)


@extend_schema(tags=["teams"])
class TeamMemberListApi(ListApi):
    @extend_schema(responses=TeamMemberOutput(many=True), summary="List a team's members")
    def get(self, request, org_slug, team_id):
        _, team = get_team_access(request, org_slug, team_id, "teams.read")
        links = TeamMembership.objects.filter(team=team).select_related("user").order_by("user__email", "id")
        return self.paginated_response(links, TeamMemberOutput, admin_ids=team_admin_ids(team))

    @extend_schema(request=TeamMemberAddInput, responses={201: TeamMemberOutput}, summary="Add a member to a team")
    def post(self, request, org_slug, team_id):
        access, team = get_team_access(request, org_slug, team_id, "teams.manage")
        data = validated(TeamMemberAddInput, request.data)
        user = org_member(access.org, data["user"])
        services.add_team_member(actor=access.actor, team=team, user=user, team_admin=data["team_admin"])
        return team_member_response(team, user, status=status.HTTP_201_CREATED)


@extend_schema(tags=["teams"])
class TeamMemberDetailApi(BaseApi):
    @extend_schema(request=TeamMemberUpdateInput, responses=TeamMemberOutput, summary="Make or unmake a team admin")
    def patch(self, request, org_slug, team_id, user_id):
        access, team = get_team_access(request, org_slug, team_id, "teams.manage")
        link = found(TeamMembership.objects.filter(team=team, user__uuid=user_id).select_related("user"))
        data = validated(TeamMemberUpdateInput, request.data)
        services.set_team_admin(actor=access.actor, team=team, user=link.user, team_admin=data["team_admin"])
        return team_member_response(team, link.user)

    @extend_schema(request=None, responses={204: None}, summary="Take a member out of a team")
    def delete(self, request, org_slug, team_id, user_id):
        access, team = get_team_access(request, org_slug, team_id, "teams.manage")
        link = found(TeamMembership.objects.filter(team=team, user__uuid=user_id).select_related("user"))
        services.remove_team_member(actor=access.actor, team=team, user=link.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# Members -----------------------------------------------------------------------------------


def members_of(org):
    return Membership.objects.filter(org=org).select_related("user").order_by("user__email", "id")


class MemberOutput(serializers.Serializer):
    id = serializers.UUIDField(help_text="The membership's id.")
    user = serializers.UUIDField(source="user.uuid")
    email = serializers.EmailField(source="user.email")
    full_name = serializers.CharField(source="user.full_name")
    role = serializers.ChoiceField(choices=Role.choices)
    joined_at = serializers.DateTimeField(source="created_at")


class MemberQuery(SearchQuery):
    role = serializers.ChoiceField(choices=Role.choices, required=False)


class MemberUpdateInput(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


@extend_schema(tags=["members"])
class MemberListApi(ListApi):
    @extend_schema(parameters=[MemberQuery], responses=MemberOutput(many=True), summary="List the org's members")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "members.read")
        query = validated(MemberQuery, request.query_params)
        members = members_of(access.org)
        if query.get("q"):
            members = members.filter(Q(user__email__icontains=query["q"]) | Q(user__full_name__icontains=query["q"]))
        if query.get("role"):
            members = members.filter(role=query["role"])
        return self.paginated_response(members, MemberOutput)


@extend_schema(tags=["members"])
class MemberDetailApi(BaseApi):
    @extend_schema(responses=MemberOutput, summary="Get a member")
    def get(self, request, org_slug, membership_id):
        access = get_org_access(request, org_slug, "members.read")
        return Response(MemberOutput(found(members_of(access.org).filter(pk=membership_id))).data)

    @extend_schema(request=MemberUpdateInput, responses=MemberOutput, summary="Change a member's role")
    def patch(self, request, org_slug, membership_id):
        access = get_org_access(request, org_slug, "members.manage")
        membership = found(members_of(access.org).filter(pk=membership_id))
        data = validated(MemberUpdateInput, request.data)
        membership = services.change_role(actor=access.actor, membership=membership, role=data["role"])
        return Response(MemberOutput(membership).data)

    @extend_schema(request=None, responses={204: None}, summary="Remove a member from the org and its teams")
    def delete(self, request, org_slug, membership_id):
        access = get_org_access(request, org_slug, "members.manage")
        membership = found(members_of(access.org).filter(pk=membership_id))
        services.remove_member(actor=access.actor, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


# Invitations -------------------------------------------------------------------------------


class TeamReferenceOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class InvitationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)
    team = TeamReferenceOutput(allow_null=True)
    status = serializers.ChoiceField(choices=["pending", "accepted", "revoked", "expired"])
    invited_by = serializers.EmailField(source="invited_by.email", allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class InvitationCreateInput(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices)
    team = StrictUUIDField(required=False, allow_null=True, help_text="A team to join on acceptance.")


def invitations_of(org):
    return Invitation.objects.filter(org=org).select_related("team", "invited_by").order_by("-created_at", "id")


@extend_schema(tags=["invitations"])
class InvitationListApi(ListApi):
    @extend_schema(responses=InvitationOutput(many=True), summary="List invitations")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "invitations.read")
        return self.paginated_response(invitations_of(access.org), InvitationOutput)

    @extend_schema(
        request=InvitationCreateInput,
        responses={201: InvitationOutput},
        summary="Invite someone by email",
        description="The invitation link is emailed; it is never part of a response.",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "invitations.manage")
        data = validated(InvitationCreateInput, request.data)
        team = found(Team.objects.filter(org=access.org, pk=data["team"])) if data.get("team") else None
        invitation, _token = services.invite_member(
            actor=access.actor, org=access.org, email=data["email"], role=data["role"], team=team
        )
        invitation = invitations_of(access.org).get(pk=invitation.pk)
        return Response(InvitationOutput(invitation).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["invitations"])
class InvitationRevokeApi(BaseApi):
    @extend_schema(request=None, responses=InvitationOutput, summary="Revoke a pending invitation")
    def post(self, request, org_slug, invitation_id):
        access = get_org_access(request, org_slug, "invitations.manage")
        invitation = found(invitations_of(access.org).filter(pk=invitation_id))
        services.revoke_invitation(actor=access.actor, invitation=invitation)
        return Response(InvitationOutput(invitations_of(access.org).get(pk=invitation.pk)).data)


# Management API tokens ---------------------------------------------------------------------


class ApiTokenOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)
    acts_as = serializers.SerializerMethodField(
        help_text="The role the token acts as now: its own, capped by its creator's current role; "
        "null once its creator has left the organization."
    )
    prefix = serializers.CharField(help_text="The token's first characters, to recognise it.")
    status = serializers.ChoiceField(choices=["active", "revoked", "expired"])
    created_by = serializers.EmailField(source="created_by.email", allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_acts_as(self, token: ApiToken) -> str | None:
        return acting_role(token.role, token.created_by_id, token.creator_role)


class ApiTokenCreatedOutput(ShownOnceOutput):
    object_output = ApiTokenOutput
    plaintext_field = "token"
    plaintext_help = "The token itself. Shown once: store it now."


class ApiTokenCreateInput(serializers.Serializer):
    name = name_field(100)
    role = serializers.ChoiceField(choices=Role.choices)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="Default: never.")


def api_tokens_of(org):
    return (
        with_creator_role(ApiToken.objects.filter(org=org)).select_related("created_by").order_by("-created_at", "id")
    )


@extend_schema(tags=["api-tokens"])
class ApiTokenListApi(ListApi):
    @extend_schema(responses=ApiTokenOutput(many=True), summary="List management API tokens")
    def get(self, request, org_slug):
        access = get_org_access(request, org_slug, "tokens.read")
        return self.paginated_response(api_tokens_of(access.org), ApiTokenOutput)

    @extend_schema(
        request=ApiTokenCreateInput,
        responses={201: ApiTokenCreatedOutput},
        summary="Create a management API token",
        description="The response carries the token in `token`, once; only its digest is stored.",
    )
    def post(self, request, org_slug):
        access = get_org_access(request, org_slug, "tokens.manage")
        data = validated(ApiTokenCreateInput, request.data)
        token, plaintext = services.create_api_token(
            actor=access.actor,
            org=access.org,
            name=data["name"],
            role=data["role"],
            expires_at=data.get("expires_at"),
        )
        token = api_tokens_of(access.org).get(pk=token.pk)
        body = ApiTokenCreatedOutput(token, context={"plaintext": plaintext}).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["api-tokens"])
class ApiTokenRevokeApi(BaseApi):
    @extend_schema(request=None, responses=ApiTokenOutput, summary="Revoke a management API token")
    def post(self, request, org_slug, token_id):
        access = get_org_access(request, org_slug, "tokens.manage")
        token = found(api_tokens_of(access.org).filter(pk=token_id))
        services.revoke_api_token(actor=access.actor, token=token)
        return Response(ApiTokenOutput(api_tokens_of(access.org).get(pk=token.pk)).data)


class RateLimitFailOpenInput(serializers.Serializer):
    fail_open = serializers.BooleanField(
        help_text=(
            "While the gateway cannot reach Redis: true admits requests of keys with an RPM/TPM limit "
            "(uncounted), false refuses them (503 rate_limit_unavailable)."
        )
    )


@extend_schema(tags=["orgs"])
class RateLimitFailOpenApi(BaseApi):
    @extend_schema(
        request=RateLimitFailOpenInput,
        responses=RateLimitFailOpenInput,
        summary="Choose whether rate-limited keys' requests are admitted while limits cannot be checked",
    )
    def put(self, request, org_slug):
        access = get_org_access(request, org_slug, "org.manage")
        data = validated(RateLimitFailOpenInput, request.data)
        org = services.set_rate_limit_fail_open(actor=access.actor, org=access.org, fail_open=data["fail_open"])
        return Response(RateLimitFailOpenInput({"fail_open": org.rate_limit_fail_open}).data)

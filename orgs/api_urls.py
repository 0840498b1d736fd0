"""Org routes of the API, under /api/v1/ (names: api:orgs:<name>)."""

from django.urls import path

from . import api

app_name = "orgs"

org = "orgs/<slug:org_slug>"

urlpatterns = [
    path("orgs/", api.OrgListApi.as_view(), name="org-list"),
    path(f"{org}/teams/", api.TeamListApi.as_view(), name="team-list"),
    path(f"{org}/teams/<uuid:team_id>/", api.TeamDetailApi.as_view(), name="team-detail"),
    path(f"{org}/teams/<uuid:team_id>/limits/", api.TeamLimitsApi.as_view(), name="team-limits"),
    path(f"{org}/teams/<uuid:team_id>/members/", api.TeamMemberListApi.as_view(), name="team-member-list"),
    path(
        f"{org}/teams/<uuid:team_id>/members/<uuid:user_id>/",
        api.TeamMemberDetailApi.as_view(),
        name="team-member-detail",
    ),
    path(f"{org}/members/", api.MemberListApi.as_view(), name="member-list"),
    path(f"{org}/members/<uuid:membership_id>/", api.MemberDetailApi.as_view(), name="member-detail"),
    path(f"{org}/invitations/", api.InvitationListApi.as_view(), name="invitation-list"),
    path(
        f"{org}/invitations/<uuid:invitation_id>/revoke/", api.InvitationRevokeApi.as_view(), name="invitation-revoke"
    ),
    path(f"{org}/api-tokens/", api.ApiTokenListApi.as_view(), name="api-token-list"),
    path(f"{org}/api-tokens/<uuid:token_id>/revoke/", api.ApiTokenRevokeApi.as_view(), name="api-token-revoke"),
    path(f"{org}/settings/rate-limit-fail-open/", api.RateLimitFailOpenApi.as_view(), name="rate-limit-fail-open"),
]

from django.urls import path

from . import views

app_name = "orgs"

org = "orgs/<slug:org_slug>/"
team = org + "teams/<uuid:team_id>/"

urlpatterns = [
    path("", views.home, name="home"),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path(org, views.dashboard, name="dashboard"),
    path(org + "teams/", views.team_list, name="team_list"),
    path(team, views.team_detail, name="team_detail"),
    path(team + "edit/", views.team_update, name="team_update"),
    path(team + "limits/", views.team_limits, name="team_limits"),
    path(team + "delete/", views.team_delete, name="team_delete"),
    path(team + "members/add/", views.team_member_add, name="team_member_add"),
    path(team + "members/<uuid:user_id>/remove/", views.team_member_remove, name="team_member_remove"),
    path(team + "members/<uuid:user_id>/admin/", views.team_member_admin, name="team_member_admin"),
    path(org + "members/", views.member_list, name="member_list"),
    path(org + "members/<uuid:membership_id>/role/", views.member_role, name="member_role"),
    path(org + "members/<uuid:membership_id>/remove/", views.member_remove, name="member_remove"),
    path(org + "invitations/", views.invitation_list, name="invitation_list"),
    path(org + "invitations/<uuid:invitation_id>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path(org + "api-tokens/", views.token_list, name="token_list"),
    path(org + "api-tokens/<uuid:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path(org + "settings/", views.org_settings, name="settings"),
]

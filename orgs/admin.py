"""Platform staff's view of orgs. Staff read here; changes go through the portal's services
so that every change is audited."""

from django.contrib import admin

from .models import ApiToken, Invitation, Membership, Organization, Team, User


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(User)
class UserAdmin(ReadOnlyAdmin):
    list_display = ["email", "full_name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "full_name"]
    exclude = ["password"]


@admin.register(Organization)
class OrganizationAdmin(ReadOnlyAdmin):
    list_display = ["name", "slug", "require_mfa", "created_at"]
    search_fields = ["name", "slug"]


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ["user", "org", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "org"]


@admin.register(Team)
class TeamAdmin(ReadOnlyAdmin):
    list_display = ["name", "org", "slug", "created_at"]
    list_select_related = ["org"]


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = ["email", "org", "role", "created_at", "expires_at", "accepted_at", "revoked_at"]
    exclude = ["token_digest"]
    list_select_related = ["org"]


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["name", "org", "role", "prefix", "created_at", "expires_at", "revoked_at"]
    exclude = ["digest"]
    list_select_related = ["org"]

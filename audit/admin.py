from django.contrib import admin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the database refuses changes anyway; this keeps the admin from offering them."""

    list_display = ["created_at", "org", "sequence", "action", "actor_label", "target_type", "target_label"]
    list_filter = ["action"]
    search_fields = ["action", "actor_label", "target_label"]
    list_select_related = ["org"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

from rest_framework import permissions

from .middleware import mfa_setup_required
from .models import User


class RequireMfaSetUp(permissions.BasePermission):
    """Pages send owners and admins of an org that requires MFA to set it up first
    (orgs/middleware.py); over a session the API refuses them the same way, with a JSON 403.
    Management API tokens are not people and are not asked."""

    message = "Set up two-factor authentication before using the API."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return not isinstance(user, User) or not mfa_setup_required(user)

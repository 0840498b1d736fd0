from allauth.mfa.models import Authenticator
from django.shortcuts import redirect
from django.urls import reverse

from .models import Membership
from .roles import MFA_REQUIRED_ROLES

# Paths a person without MFA may still reach: setting it up, signing out, static files.
ALLOWED_PREFIXES = ("/accounts/", "/static/", "/invitations/")


class RequireMfaMiddleware:
    """Sends owners and admins of an org that requires MFA to MFA set-up before anything else."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and not request.path.startswith(ALLOWED_PREFIXES)
            and not request.path.startswith("/api/")  # the API answers with JSON, below
            and mfa_setup_required(user)
        ):
            return redirect(reverse("mfa_activate_totp") + "?next=" + request.path)
        return self.get_response(request)


def mfa_setup_required(user) -> bool:
    """An owner or admin of an org that requires MFA, without an authenticator yet."""
    must = Membership.objects.filter(user=user, role__in=MFA_REQUIRED_ROLES, org__require_mfa=True).exists()
    if not must:
        return False
    return not Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()

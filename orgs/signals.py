"""Audit events for sign-ins, failed sign-ins and MFA changes.

A sign-in belongs to no single org, so it is recorded in each org the person belongs to
(their auditors see it); a failed sign-in for an unknown email goes to the platform chain.
"""

from allauth.mfa.signals import authenticator_added, authenticator_removed, authenticator_reset
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver

from audit.context import Actor
from audit.services import record_event

from .models import Organization, User


def _record_for_user(user: User | None, action: str, diff: dict | None = None, label: str = "") -> None:
    actor = (
        Actor(kind="user", id=str(user.uuid), label=user.email, user_id=user.pk)
        if user is not None
        else Actor(kind="user", label=label[:254])
    )
    orgs = list(Organization.objects.filter(memberships__user=user)) if user is not None else []
    with transaction.atomic():
        for org in orgs or [None]:
            record_event(
                actor=actor,
                org=org,
                action=action,
                target_type="user",
                target_id=str(user.uuid) if user else "",
                target_label=user.email if user else label[:254],
                diff=diff or {},
            )


@receiver(user_logged_in)
def on_logged_in(sender, request, user, **kwargs) -> None:
    _record_for_user(user, "auth.login")


@receiver(user_logged_out)
def on_logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        _record_for_user(user, "auth.logout")


@receiver(user_login_failed)
def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Only the email tried is kept; the password never reaches the audit trail.
    email = str(credentials.get("email") or credentials.get("username") or "")[:254]
    user = User.objects.filter(email__iexact=email).first() if email else None
    _record_for_user(user, "auth.login_failed", label=email)


@receiver(authenticator_added)
def on_mfa_added(sender, request, user, authenticator, **kwargs) -> None:
    _record_for_user(user, "auth.mfa_added", {"type": {"after": authenticator.type}})


@receiver(authenticator_removed)
def on_mfa_removed(sender, request, user, authenticator, **kwargs) -> None:
    _record_for_user(user, "auth.mfa_removed", {"type": {"before": authenticator.type}})


@receiver(authenticator_reset)
def on_mfa_reset(sender, request, user, authenticator, **kwargs) -> None:
    _record_for_user(user, "auth.mfa_recovery_codes_regenerated", {"type": {"after": authenticator.type}})

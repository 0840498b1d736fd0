from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from .models import Invitation


@shared_task(
    name="orgs.send_invitation_email",
    ignore_result=True,
    autoretry_for=(ConnectionError, TimeoutError, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def send_invitation_email(invitation_id: str, token: str) -> None:
    """Email the invitation link. The token is not stored, so it travels with the task."""
    invitation = Invitation.objects.select_related("org", "invited_by").filter(pk=invitation_id).first()
    if invitation is None or invitation.status != "pending":
        return
    link = settings.SITE_URL + reverse("orgs:invitation_accept", args=[token])
    context = {"invitation": invitation, "link": link}
    send_mail(
        subject=f"You are invited to {invitation.org.name} on Gatehouse",
        message=render_to_string("orgs/email/invitation.txt", context),
        from_email=None,
        recipient_list=[invitation.email],
    )

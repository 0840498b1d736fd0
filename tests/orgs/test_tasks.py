"""orgs/tasks.py: the invitation email, through a real Celery worker on the real Redis broker."""

import re
import time

import pytest
from django.conf import settings
from django.test import Client

from orgs.models import Invitation
from orgs.roles import Role
from orgs.services import accept_invitation, invite_member, revoke_invitation
from orgs.tasks import send_invitation_email
from orgs.tokens import digest
from tests.conftest import PASSWORD

LINK = re.compile(r"^(?P<site>https?://\S+?)/invitations/(?P<token>[A-Za-z0-9_-]+)/$", re.MULTILINE)


def wait_for_mail(outbox: list, count: int = 1, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(outbox) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(outbox) >= count, (
        f"no email after {timeout}s: is the worker consuming {settings.CELERY_TASK_DEFAULT_QUEUE!r}?"
    )


@pytest.mark.django_db(transaction=True)
def test_an_invitation_email_goes_through_the_worker_with_a_working_link(
    org, actors, mailoutbox, celery_worker_on_test_queue
):
    invitation, _token = invite_member(actor=actors["admin"], org=org, email="New@Example.test", role=Role.DEVELOPER)
    wait_for_mail(mailoutbox)
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == ["new@example.test"]
    assert message.subject == "You are invited to Acme on Gatehouse"
    assert "Admin invited you to join Acme on Gatehouse as Developer." in message.body

    match = LINK.search(message.body)
    assert match, message.body
    assert match.group("site") == settings.SITE_URL
    token = match.group("token")
    invitation.refresh_from_db()
    assert digest(token) == invitation.token_digest

    page = Client().get(f"/invitations/{token}/")
    assert page.status_code == 200
    assert "Acme" in page.content.decode()


@pytest.mark.django_db(transaction=True)
def test_no_email_for_an_invitation_that_never_committed(org, actors, mailoutbox, celery_worker_on_test_queue):
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        invite_member(actor=actors["admin"], org=org, email="ghost@example.test", role=Role.VIEWER)
        raise RuntimeError("the request failed after the service ran")
    invite_member(actor=actors["admin"], org=org, email="real@example.test", role=Role.VIEWER)
    wait_for_mail(mailoutbox)
    time.sleep(0.5)  # a second email, if any, would be behind the first in the queue
    assert [message.to for message in mailoutbox] == [["real@example.test"]]
    assert not Invitation.objects.filter(email="ghost@example.test").exists()


# The task run twice, or late, is harmless -------------------------------------------------


def test_the_task_sends_nothing_for_a_revoked_invitation(org, actors, mailoutbox):
    invitation, token = invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER)
    revoke_invitation(actor=actors["admin"], invitation=invitation)
    send_invitation_email(str(invitation.pk), token)
    assert mailoutbox == []


def test_the_task_sends_nothing_for_an_accepted_invitation(org, actors, mailoutbox):
    invitation, token = invite_member(actor=actors["admin"], org=org, email="new@example.test", role=Role.VIEWER)
    accept_invitation(token=token, password=PASSWORD)
    send_invitation_email(str(invitation.pk), token)
    assert mailoutbox == []


def test_the_task_sends_nothing_for_a_deleted_invitation(db, mailoutbox):
    send_invitation_email("00000000-0000-0000-0000-000000000000", "token")
    assert mailoutbox == []


def test_the_task_is_named_and_retries_only_transient_errors():
    assert send_invitation_email.name == "orgs.send_invitation_email"
    assert send_invitation_email.ignore_result is True
    assert set(send_invitation_email.autoretry_for) == {ConnectionError, TimeoutError, OSError}
    assert send_invitation_email.max_retries == 8

"""The portal in a real browser: sign in, create a team, invite a member, read the audit trail."""

import re

import pytest
from playwright.sync_api import expect

from audit.models import AuditEvent
from orgs.models import Invitation, Team
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.locator('input[name="login"]').fill(email)
    page.locator('input[name="password"]').fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/orgs/acme/$"))


def test_an_owner_creates_a_team_invites_a_member_and_reads_the_audit_trail(page, org, users):
    sign_in(page, "owner@acme.test", PASSWORD)

    page.goto("/orgs/acme/teams/")
    page.get_by_label("Name").fill("Research")
    page.get_by_role("button", name="Create team").click()
    page.wait_for_url(re.compile(r"/orgs/acme/teams/[0-9a-f-]{36}/$"))
    expect(page.get_by_role("heading", name="Research")).to_be_visible()
    team = Team.objects.get(org=org, name="Research")

    page.goto("/orgs/acme/invitations/")
    page.get_by_label("Email address").fill("new.hire@example.test")
    page.get_by_label("Role", exact=True).select_option("developer")
    page.get_by_label(re.compile(r"^Team")).select_option(label="Research")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_text("Invitation sent to new.hire@example.test.")).to_be_visible()
    invitation = Invitation.objects.get(org=org, email="new.hire@example.test")
    assert (invitation.role, invitation.team_id, invitation.status) == ("developer", team.pk, "pending")

    page.goto("/orgs/acme/audit/")
    events = page.locator("main")
    expect(events).to_contain_text("team.created")
    expect(events).to_contain_text("member.invited")
    expect(events).to_contain_text("new.hire@example.test")
    assert AuditEvent.objects.filter(org=org, action="team.created", target_id=str(team.pk)).count() == 1
    assert AuditEvent.objects.filter(org=org, action="member.invited", target_id=str(invitation.pk)).count() == 1


def test_a_viewer_sees_no_way_to_create_a_team_and_is_refused_when_trying(page, org, users):
    sign_in(page, "viewer@acme.test", PASSWORD)
    page.goto("/orgs/acme/teams/")
    expect(page.get_by_role("button", name="Create team")).to_have_count(0)
    response = page.goto("/orgs/acme/settings/")
    assert response.status == 403

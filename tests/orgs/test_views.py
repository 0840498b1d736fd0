"""The portal pages of orgs: each renders for a role allowed to see it, each write works through
the page and leaves its audit event, bad input is answered next to its field (never a 500),
and list pages cost the same number of queries for 3 rows as for 30."""

import hashlib
import re
import uuid
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from orgs.access import is_team_admin
from orgs.models import ApiToken, Invitation, Membership, Team, TeamMembership, User
from orgs.roles import Role
from orgs.services import (
    accept_invitation,
    add_team_member,
    create_api_token,
    create_team,
    invite_member,
    revoke_invitation,
    set_team_admin,
    update_org_settings,
)
from tests.conftest import PASSWORD, SYSTEM, make_user

pytestmark = pytest.mark.django_db


def url(name: str, **kwargs) -> str:
    return reverse(f"orgs:{name}", kwargs=kwargs)


def last_event(org, action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(org=org, action=action).order_by("-sequence").first()
    assert event is not None, f"no {action} event"
    return event


def text(response) -> str:
    return response.content.decode()


class FormControls(HTMLParser):
    """Collects form controls and labels, to check that every visible control has a label."""

    def __init__(self):
        super().__init__()
        self.controls: list[dict] = []
        self.label_targets: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "label" and attributes.get("for"):
            self.label_targets.add(attributes["for"])
        if tag in {"input", "select", "textarea"} and attributes.get("type") not in {"hidden", "submit", "button"}:
            self.controls.append(attributes)


def assert_every_control_labelled(response) -> None:
    parser = FormControls()
    parser.feed(text(response))
    for control in parser.controls:
        assert control.get("id") in parser.label_targets, f"unlabelled control: {control}"


def field_error(response, field_id: str) -> str:
    """The error list Django renders next to a field (id="<field id>_error"), as text."""
    match = re.search(rf'<ul class="errorlist" id="{field_id}_error">(.*?)</ul>', text(response), re.S)
    assert match, f"no error next to {field_id}"
    return re.sub(r"<[^>]+>", " ", match.group(1))


# Home, layout, navigation ----------------------------------------------------------------


def test_home_sends_the_signed_out_to_sign_in():
    response = Client().get(url("home"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_home_sends_a_member_to_their_first_org(org, client_for):
    response = client_for("viewer").get(url("home"))
    assert response.status_code == 302
    assert response.url == url("dashboard", org_slug="acme")


def test_home_tells_someone_without_an_org(client_for):
    response = client_for("outsider").get(url("home"))
    assert response.status_code == 200
    assert "not in an organization yet" in text(response)


def test_layout_has_skip_link_switcher_and_footer(org, other_org, users, client_for):
    other_org.memberships.create(user=users["viewer"], role=Role.VIEWER)
    response = client_for("viewer").get(url("dashboard", org_slug="acme"))
    html = text(response)
    assert '<a class="skip-link" href="#main">' in html
    assert 'id="main"' in html
    assert url("dashboard", org_slug="other") in html  # the org switcher
    assert "<footer" in html


@pytest.mark.parametrize(
    ("role", "shown", "hidden"),
    [
        ("viewer", ["team_list"], ["member_list", "invitation_list", "token_list", "settings"]),
        ("developer", ["team_list", "member_list"], ["invitation_list", "token_list", "settings"]),
        ("auditor", ["team_list", "member_list", "invitation_list", "token_list"], ["settings"]),
        ("admin", ["team_list", "member_list", "invitation_list", "token_list", "settings"], []),
    ],
)
def test_navigation_shows_what_the_role_may_open(org, client_for, role, shown, hidden):
    html = text(client_for(role).get(url("dashboard", org_slug="acme")))
    for name in shown:
        assert f'href="{url(name, org_slug="acme")}"' in html
    for name in hidden:
        assert f'href="{url(name, org_slug="acme")}"' not in html
    audit_link = f'href="{reverse("audit:list", kwargs={"org_slug": "acme"})}"'
    assert (audit_link in html) == (role in {"auditor", "admin"})


def test_mfa_banner_recommends_requiring_mfa_with_a_settings_link_for_managers(org, client_for):
    admin_page = text(client_for("admin").get(url("dashboard", org_slug="acme")))
    viewer_page = text(client_for("viewer").get(url("dashboard", org_slug="acme")))
    assert "Two-factor authentication is optional" in admin_page
    assert "Two-factor authentication is optional" in viewer_page
    assert f'href="{url("settings", org_slug="acme")}"' in admin_page
    assert f'href="{url("settings", org_slug="acme")}"' not in viewer_page


def test_no_mfa_banner_when_the_org_requires_mfa(org, client_for):
    update_org_settings(actor=SYSTEM, org=org, name=org.name, require_mfa=True)
    response = client_for("viewer").get(url("dashboard", org_slug="acme"))
    assert response.status_code == 200
    assert "Two-factor authentication is optional" not in text(response)


# Pages render for an allowed role ----------------------------------------------------------


PAGES = [
    ("dashboard", "viewer", "Acme"),
    ("team_list", "viewer", "Platform"),
    ("team_detail", "viewer", "Platform"),
    ("member_list", "developer", "owner@acme.test"),
    ("invitation_list", "auditor", "Invitations"),
    ("token_list", "finance", "API tokens"),
    ("settings", "admin", "Require two-factor authentication"),
]


@pytest.mark.parametrize(("name", "role", "expected"), PAGES)
def test_page_renders_for_an_allowed_role(org, team, client_for, name, role, expected):
    kwargs = {"org_slug": "acme"}
    if name == "team_detail":
        kwargs["team_id"] = team.pk
    response = client_for(role).get(url(name, **kwargs))
    assert response.status_code == 200
    assert expected in text(response)
    assert_every_control_labelled(response)


@pytest.mark.parametrize(("name", "role", "expected"), PAGES)
def test_management_pages_label_every_control_for_admins(org, team, client_for, name, role, expected):
    kwargs = {"org_slug": "acme"}
    if name == "team_detail":
        kwargs["team_id"] = team.pk
    response = client_for("admin").get(url(name, **kwargs))
    assert response.status_code == 200
    assert_every_control_labelled(response)


def test_dashboard_shows_counts_and_recent_audit_events_to_auditors(org, team, client_for, actors):
    from keys.services import issue_key

    issue_key(actor=actors["admin"], team=team, name="one")
    issue_key(actor=actors["admin"], team=team, name="two")
    html = text(client_for("auditor").get(url("dashboard", org_slug="acme")))
    assert "Recent activity" in html
    assert "team.member_added" in html
    assert re.search(r"Active caller keys</span>\s*<a [^>]*>2</a>", html)


def test_dashboard_hides_audit_events_from_viewers(org, team, client_for):
    html = text(client_for("viewer").get(url("dashboard", org_slug="acme")))
    assert "Recent activity" not in html
    assert "team.member_added" not in html


# Access: the check comes before the method and the input ------------------------------------


@pytest.mark.parametrize("method", ["get", "post"])
def test_post_only_action_answers_404_to_outsiders_and_403_to_low_roles(org, team, client_for, method):
    path = url("team_update", org_slug="acme", team_id=team.pk)
    assert getattr(client_for("outsider"), method)(path).status_code == 404
    assert getattr(client_for("viewer"), method)(path).status_code == 403


def test_post_only_action_answers_405_to_get_from_an_allowed_role(org, team, client_for):
    assert client_for("admin").get(url("team_update", org_slug="acme", team_id=team.pk)).status_code == 405


def test_signed_out_actions_redirect_to_sign_in(org, team):
    response = Client().post(url("team_list", org_slug="acme"), {"name": "Intruders"})
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    assert not Team.objects.filter(name="Intruders").exists()


def test_unknown_and_foreign_team_ids_answer_404(org, other_org, client_for):
    client = client_for("admin")
    foreign = Team.objects.get(org=other_org)
    assert client.get(url("team_detail", org_slug="acme", team_id=uuid.uuid4())).status_code == 404
    assert client.get(url("team_detail", org_slug="acme", team_id=foreign.pk)).status_code == 404
    assert client.get(f"/orgs/acme/teams/{foreign.pk}x/").status_code == 404
    assert client.get("/orgs/acme/teams/12/").status_code == 404


def test_outsider_gets_404_for_another_orgs_pages(org, other_org, client_for):
    assert client_for("admin").get(url("dashboard", org_slug="other")).status_code == 404
    assert client_for("admin").get(url("dashboard", org_slug="nope")).status_code == 404


# Teams -------------------------------------------------------------------------------------


def test_create_team_through_the_page(org, client_for, users):
    response = client_for("admin").post(
        url("team_list", org_slug="acme"), {"name": "Search", "description": "Retrieval and ranking"}
    )
    team = Team.objects.get(org=org, name="Search")
    assert response.status_code == 302
    assert response.url == url("team_detail", org_slug="acme", team_id=team.pk)
    assert team.description == "Retrieval and ranking"
    event = last_event(org, "team.created")
    assert event.actor_label == users["admin"].email
    assert event.target_id == str(team.pk)


def test_create_team_accepts_unicode_names(org, client_for):
    response = client_for("admin").post(url("team_list", org_slug="acme"), {"name": "Équipe données 🚀"})
    assert response.status_code == 302
    assert Team.objects.filter(org=org, name="Équipe données 🚀").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "This field is required."),
        ("   ", "This field is required."),
        ("x" * 10_000, "at most 100 characters"),
        ("Bad\x00name", "Null characters are not allowed."),
        ("Bad\nname", "Control and invisible formatting characters are not allowed."),
        ("Evil\u202ename", "Control and invisible formatting characters are not allowed."),
        ("!!!", "Use at least one letter or digit."),
    ],
)
def test_create_team_shows_errors_next_to_the_name(org, client_for, name, message):
    response = client_for("admin").post(url("team_list", org_slug="acme"), {"name": name})
    assert response.status_code == 400
    assert message in field_error(response, "id_name")
    assert 'aria-describedby="id_name_error"' in text(response) or "id_name_error" in text(response)
    assert 'aria-invalid="true"' in text(response)
    assert Team.objects.filter(org=org).count() == 0


def test_create_team_refuses_a_duplicate_name_next_to_the_field(org, team, client_for):
    response = client_for("admin").post(url("team_list", org_slug="acme"), {"name": "PLATFORM"})
    assert response.status_code == 400
    assert "already exists" in field_error(response, "id_name")


def test_create_team_refuses_a_name_whose_slug_is_taken_next_to_the_field(org, team, client_for):
    response = client_for("admin").post(url("team_list", org_slug="acme"), {"name": "Platform!"})
    assert response.status_code == 400
    assert "already exists" in field_error(response, "id_name")


def test_create_team_refuses_an_overlong_description(org, client_for):
    response = client_for("admin").post(url("team_list", org_slug="acme"), {"name": "Ok", "description": "d" * 501})
    assert response.status_code == 400
    assert "at most 500 characters" in field_error(response, "id_description")


def test_viewer_cannot_create_a_team(org, client_for):
    assert client_for("viewer").post(url("team_list", org_slug="acme"), {"name": "Mine"}).status_code == 403
    assert not Team.objects.filter(name="Mine").exists()


def test_team_list_search_and_my_teams_filter(org, team, client_for):
    create_team(actor=SYSTEM, org=org, name="Data science", description="Models")
    client = client_for("developer")
    html = text(client.get(url("team_list", org_slug="acme") + "?q=data"))
    assert "Data science" in html and ">Platform<" not in html
    html = text(client.get(url("team_list", org_slug="acme") + "?mine=on"))
    assert ">Platform<" in html and "Data science" not in html


def test_team_list_survives_junk_query_strings(org, team, client_for):
    response = client_for("viewer").get(url("team_list", org_slug="acme") + "?q=" + "x" * 5000 + "&page=abc")
    assert response.status_code == 200


def test_team_detail_shows_members_and_admins(org, team, users, client_for):
    set_team_admin(actor=SYSTEM, team=team, user=users["developer"], team_admin=True)
    html = text(client_for("viewer").get(url("team_detail", org_slug="acme", team_id=team.pk)))
    assert "developer@acme.test" in html and "viewer@acme.test" in html
    assert "Team admin" in html
    assert "Add a member" not in html  # viewers only look


def test_add_team_member_through_the_page(org, team, users, client_for):
    response = client_for("admin").post(
        url("team_member_add", org_slug="acme", team_id=team.pk), {"user": str(users["finance"].uuid)}
    )
    assert response.status_code == 302
    assert TeamMembership.objects.filter(team=team, user=users["finance"]).exists()
    assert last_event(org, "team.member_added").diff["member"]["after"] == "finance@acme.test"


def test_add_team_member_as_team_admin(org, team, users, client_for):
    client_for("admin").post(
        url("team_member_add", org_slug="acme", team_id=team.pk),
        {"user": str(users["finance"].uuid), "team_admin": "on"},
    )
    assert is_team_admin(users["finance"], team)


@pytest.mark.parametrize("who", ["outsider", "developer", "unknown", "junk"])
def test_add_team_member_refuses_someone_not_eligible_next_to_the_field(org, team, users, client_for, who):
    value = {"unknown": str(uuid.uuid4()), "junk": "not-a-uuid"}.get(who) or str(users[who].uuid)
    response = client_for("admin").post(url("team_member_add", org_slug="acme", team_id=team.pk), {"user": value})
    assert response.status_code == 400
    assert "Choose a member of the organization" in field_error(response, "id_user")


def test_grant_and_withdraw_team_admin_through_the_page(org, team, users, client_for):
    client = client_for("admin")
    path = url("team_member_admin", org_slug="acme", team_id=team.pk, user_id=users["viewer"].uuid)
    assert client.post(path, {"team_admin": "1"}).status_code == 302
    assert is_team_admin(users["viewer"], team)
    assert last_event(org, "team.admin_granted").diff["member"]["after"] == "viewer@acme.test"
    assert client.post(path, {"team_admin": "0"}).status_code == 302
    assert not is_team_admin(User.objects.get(pk=users["viewer"].pk), team)
    assert last_event(org, "team.admin_revoked")


def test_remove_team_member_through_the_page(org, team, users, client_for):
    path = url("team_member_remove", org_slug="acme", team_id=team.pk, user_id=users["viewer"].uuid)
    assert client_for("admin").post(path).status_code == 302
    assert not TeamMembership.objects.filter(team=team, user=users["viewer"]).exists()
    assert last_event(org, "team.member_removed").diff["member"]["before"] == "viewer@acme.test"


def test_remove_someone_not_in_the_team_answers_404(org, team, users, client_for):
    path = url("team_member_remove", org_slug="acme", team_id=team.pk, user_id=users["finance"].uuid)
    assert client_for("admin").post(path).status_code == 404


def test_edit_team_through_the_page(org, team, client_for):
    path = url("team_update", org_slug="acme", team_id=team.pk)
    response = client_for("admin").post(path, {"name": "Platform Core", "description": "Gateway"})
    assert response.status_code == 302
    team.refresh_from_db()
    assert (team.name, team.description) == ("Platform Core", "Gateway")
    assert last_event(org, "team.updated").diff["name"] == {"before": "Platform", "after": "Platform Core"}


def test_edit_team_shows_errors_next_to_the_field(org, team, client_for):
    create_team(actor=SYSTEM, org=org, name="Search")
    path = url("team_update", org_slug="acme", team_id=team.pk)
    response = client_for("admin").post(path, {"name": "search", "description": ""})
    assert response.status_code == 400
    assert "already exists" in field_error(response, "id_name")
    response = client_for("admin").post(path, {"name": "y" * 10_000})
    assert response.status_code == 400
    assert "at most 100 characters" in field_error(response, "id_name")


def test_team_admin_manages_their_team_but_cannot_delete_it(org, team, users, client_for):
    set_team_admin(actor=SYSTEM, team=team, user=users["developer"], team_admin=True)
    client = client_for("developer")
    html = text(client.get(url("team_detail", org_slug="acme", team_id=team.pk)))
    assert "Add a member" in html
    response = client.post(
        url("team_member_add", org_slug="acme", team_id=team.pk), {"user": str(users["finance"].uuid)}
    )
    assert response.status_code == 302
    assert last_event(org, "team.member_added").actor_label == "developer@acme.test"
    assert client.get(url("team_delete", org_slug="acme", team_id=team.pk)).status_code == 403
    other = create_team(actor=SYSTEM, org=org, name="Other")
    assert client.post(url("team_update", org_slug="acme", team_id=other.pk), {"name": "Mine"}).status_code == 403


def test_delete_team_asks_for_confirmation_then_deletes(org, team, client_for):
    client = client_for("admin")
    path = url("team_delete", org_slug="acme", team_id=team.pk)
    response = client.get(path)
    assert response.status_code == 200
    assert "Delete the team" in text(response)
    assert Team.objects.filter(pk=team.pk).exists()
    response = client.post(path)
    assert response.status_code == 302
    assert response.url == url("team_list", org_slug="acme")
    assert not Team.objects.filter(pk=team.pk).exists()
    assert last_event(org, "team.deleted").target_id == str(team.pk)


# Members -----------------------------------------------------------------------------------


def test_member_list_search_and_role_filter(org, client_for):
    client = client_for("auditor")
    html = text(client.get(url("member_list", org_slug="acme") + "?q=FINANCE"))
    assert "finance@acme.test" in html and "viewer@acme.test" not in html
    html = text(client.get(url("member_list", org_slug="acme") + "?role=viewer"))
    assert "viewer@acme.test" in html and "finance@acme.test" not in html
    assert client.get(url("member_list", org_slug="acme") + "?role=emperor").status_code == 200


def test_member_list_offers_role_changes_only_to_managers(org, users, client_for):
    viewer = Membership.objects.get(org=org, user=users["viewer"])
    role_url = url("member_role", org_slug="acme", membership_id=viewer.pk)
    assert role_url not in text(client_for("auditor").get(url("member_list", org_slug="acme")))
    html = text(client_for("admin").get(url("member_list", org_slug="acme")))
    assert role_url in html
    # An admin is offered only roles they may grant, and no form on the owner's row or their own.
    owner = Membership.objects.get(org=org, role=Role.OWNER)
    assert url("member_role", org_slug="acme", membership_id=owner.pk) not in html
    row_select = html[html.index(f'id="id_{viewer.pk}_role"') :]
    row_select = row_select[: row_select.index("</select>")]
    assert '"admin"' in row_select and '"owner"' not in row_select


def test_change_role_through_the_page(org, users, client_for):
    membership = Membership.objects.get(org=org, user=users["viewer"])
    response = client_for("admin").post(
        url("member_role", org_slug="acme", membership_id=membership.pk) + "?role=viewer&page=1",
        {"role": "developer"},
    )
    assert response.status_code == 302
    assert response.url == url("member_list", org_slug="acme") + "?role=viewer&page=1"
    membership.refresh_from_db()
    assert membership.role == Role.DEVELOPER
    event = last_event(org, "member.role_changed")
    assert event.diff == {"role": {"before": "viewer", "after": "developer"}}
    assert event.actor_label == "admin@acme.test"


@pytest.mark.parametrize(
    ("actor", "target", "role", "message"),
    [
        ("admin", "admin", "viewer", "You cannot change your own role."),
        ("admin", "viewer", "owner", "You cannot grant a role with more rights than your own."),
        ("admin", "owner", "viewer", "You cannot change the role of someone with more rights than you."),
        ("owner", "owner", "admin", "You cannot change your own role."),
    ],
)
def test_role_change_rules_are_form_errors(org, users, client_for, actor, target, role, message):
    membership = Membership.objects.get(org=org, user=users[target])
    before = membership.role
    response = client_for(actor).post(url("member_role", org_slug="acme", membership_id=membership.pk), {"role": role})
    assert response.status_code == 400
    assert message in field_error(response, f"id_{membership.pk}_role")
    assert response.context["failed_form"].errors["role"] == [message]
    membership.refresh_from_db()
    assert membership.role == before


def test_role_change_refuses_an_unknown_role(org, users, client_for):
    membership = Membership.objects.get(org=org, user=users["viewer"])
    response = client_for("admin").post(
        url("member_role", org_slug="acme", membership_id=membership.pk), {"role": "emperor"}
    )
    assert response.status_code == 400
    assert "Select a valid choice" in field_error(response, f"id_{membership.pk}_role")


def test_role_change_of_another_orgs_member_answers_404(org, other_org, client_for):
    foreign = Membership.objects.get(org=other_org)
    path = url("member_role", org_slug="acme", membership_id=foreign.pk)
    assert client_for("admin").post(path, {"role": "viewer"}).status_code == 404


def test_developer_cannot_change_roles(org, users, client_for):
    membership = Membership.objects.get(org=org, user=users["viewer"])
    path = url("member_role", org_slug="acme", membership_id=membership.pk)
    assert client_for("developer").post(path, {"role": "developer"}).status_code == 403


def test_remove_member_asks_for_confirmation_then_removes(org, team, users, client_for):
    membership = Membership.objects.get(org=org, user=users["viewer"])
    client = client_for("admin")
    path = url("member_remove", org_slug="acme", membership_id=membership.pk)
    response = client.get(path)
    assert response.status_code == 200
    assert "Remove Viewer from Acme?" in text(response)
    response = client.post(path)
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert not TeamMembership.objects.filter(team=team, user=users["viewer"]).exists()
    assert last_event(org, "member.removed").diff["email"]["before"] == "viewer@acme.test"


def test_last_owner_cannot_leave(org, users, client_for):
    membership = Membership.objects.get(org=org, user=users["owner"])
    response = client_for("owner").post(url("member_remove", org_slug="acme", membership_id=membership.pk))
    assert response.status_code == 400
    assert "The organization must keep at least one owner." in text(response)
    assert Membership.objects.filter(pk=membership.pk).exists()


def test_admin_cannot_remove_an_owner(org, users, client_for):
    membership = Membership.objects.get(org=org, user=users["owner"])
    response = client_for("admin").post(url("member_remove", org_slug="acme", membership_id=membership.pk))
    assert response.status_code == 400
    assert "more rights than you" in text(response)


# Invitations -------------------------------------------------------------------------------


def test_invite_through_the_page(org, team, client_for):
    response = client_for("admin").post(
        url("invitation_list", org_slug="acme"),
        {"email": "New.Person@Example.com", "role": "developer", "team": team.pk},
    )
    assert response.status_code == 302
    invitation = Invitation.objects.get(org=org, email="new.person@example.com")
    assert (invitation.role, invitation.team, invitation.status) == ("developer", team, "pending")
    event = last_event(org, "member.invited")
    assert event.diff["email"]["after"] == "new.person@example.com"
    html = text(client_for("admin").get(url("invitation_list", org_slug="acme")))
    assert "new.person@example.com" in html
    assert "Pending" in html


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"email": "not an email", "role": "viewer"}, "id_email", "Enter a valid email address."),
        ({"email": "a" * 300 + "@example.com", "role": "viewer"}, "id_email", "at most 254 characters"),
        ({"email": "", "role": "viewer"}, "id_email", "This field is required."),
        ({"email": "x@example.com", "role": "owner"}, "id_role", "Select a valid choice."),
        ({"email": "x@example.com", "role": "emperor"}, "id_role", "Select a valid choice."),
        ({"email": "viewer@acme.test", "role": "viewer"}, "id_email", "already a member"),
        ({"email": "x@example.com", "role": "viewer", "team": str(uuid.uuid4())}, "id_team", "Choose one of"),
        ({"email": "x@example.com", "role": "viewer", "team": "junk"}, "id_team", "Choose one of"),
    ],
)
def test_invitation_form_errors_sit_next_to_their_field(org, client_for, data, field, message):
    response = client_for("admin").post(url("invitation_list", org_slug="acme"), data)
    assert response.status_code == 400
    assert message in field_error(response, field)
    assert not Invitation.objects.filter(org=org).exists()


def test_invitation_to_another_orgs_team_is_refused(org, other_org, client_for):
    foreign = Team.objects.get(org=other_org)
    response = client_for("admin").post(
        url("invitation_list", org_slug="acme"), {"email": "x@example.com", "role": "viewer", "team": foreign.pk}
    )
    assert response.status_code == 400
    assert "Choose one of" in field_error(response, "id_team")


def test_invitation_role_choices_stop_at_the_actors_role(org, client_for):
    html = text(client_for("admin").get(url("invitation_list", org_slug="acme")))
    form = html[html.index('id="id_role"') :]
    form = form[: form.index("</select>")]
    assert '"admin"' in form and '"owner"' not in form


def test_a_second_pending_invitation_is_refused(org, actors, client_for):
    invite_member(actor=actors["admin"], org=org, email="twice@example.com", role="viewer")
    response = client_for("admin").post(
        url("invitation_list", org_slug="acme"), {"email": "twice@example.com", "role": "viewer"}
    )
    assert response.status_code == 400
    assert "pending invitation" in field_error(response, "id_email")


def test_revoke_invitation_through_the_page(org, actors, client_for):
    invitation, _token = invite_member(actor=actors["admin"], org=org, email="gone@example.com", role="viewer")
    path = url("invitation_revoke", org_slug="acme", invitation_id=invitation.pk)
    assert client_for("admin").get(path).status_code == 405
    response = client_for("admin").post(path + "?status=pending")
    assert response.status_code == 302
    assert response.url == url("invitation_list", org_slug="acme") + "?status=pending"
    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    assert last_event(org, "member.invitation_revoked").target_label == "gone@example.com"
    again = client_for("admin").post(path, follow=True)
    assert "already revoked" in text(again)


def test_invitation_status_filter(org, actors, client_for):
    invite_member(actor=actors["admin"], org=org, email="kept@example.com", role="viewer")
    revoked, _ = invite_member(actor=actors["admin"], org=org, email="revoked@example.com", role="viewer")
    revoke_invitation(actor=actors["admin"], invitation=revoked)
    html = text(client_for("auditor").get(url("invitation_list", org_slug="acme") + "?status=pending"))
    assert "kept@example.com" in html and "revoked@example.com" not in html
    html = text(client_for("auditor").get(url("invitation_list", org_slug="acme") + "?status=revoked"))
    assert "revoked@example.com" in html and "kept@example.com" not in html


def test_auditor_cannot_invite(org, client_for):
    response = client_for("auditor").post(
        url("invitation_list", org_slug="acme"), {"email": "a@b.co", "role": "viewer"}
    )
    assert response.status_code == 403


# Accepting an invitation -------------------------------------------------------------------


@pytest.fixture
def invitation(org, team, actors):
    invitation, token = invite_member(
        actor=actors["admin"], org=org, email="newbie@example.com", role="developer", team=team
    )
    return invitation, token


def accept_url(token: str) -> str:
    return url("invitation_accept", token=token)


def test_invitation_page_shows_org_and_role_and_the_account_form(invitation):
    _invitation, token = invitation
    response = Client().get(accept_url(token))
    assert response.status_code == 200
    html = text(response)
    assert "Join Acme" in html
    assert "developer" in html
    assert "newbie@example.com" in html
    assert 'name="password1"' in html and 'name="password2"' in html
    assert_every_control_labelled(response)


def test_accept_invitation_with_a_new_account(org, team, invitation):
    _invitation, token = invitation
    client = Client()
    response = client.post(
        accept_url(token),
        {"full_name": "New Bie", "password1": "a-long-unusual-passphrase", "password2": "a-long-unusual-passphrase"},
    )
    assert response.status_code == 302
    assert response.url == url("dashboard", org_slug="acme")
    user = User.objects.get(email="newbie@example.com")
    assert user.full_name == "New Bie"
    assert user.check_password("a-long-unusual-passphrase")
    assert Membership.objects.get(org=org, user=user).role == Role.DEVELOPER
    assert TeamMembership.objects.filter(team=team, user=user).exists()
    assert last_event(org, "member.joined").actor_label == "newbie@example.com"
    # Signed in straight away.
    assert client.get(url("dashboard", org_slug="acme")).status_code == 200


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (
            {"full_name": "N", "password1": "a-long-unusual-passphrase", "password2": "different-passphrase!"},
            "id_password2",
            "differ",
        ),
        ({"full_name": "N", "password1": "short", "password2": "short"}, "id_password1", "too short"),
        ({"full_name": "N", "password1": "password1234", "password2": "password1234"}, "id_password1", "too common"),
        (
            {"full_name": "N", "password1": "1234567890123", "password2": "1234567890123"},
            "id_password1",
            "entirely numeric",
        ),
        (
            {"full_name": "N", "password1": "newbie@example.com", "password2": "newbie@example.com"},
            "id_password1",
            "similar",
        ),
        (
            {"full_name": "", "password1": "a-long-unusual-passphrase", "password2": "a-long-unusual-passphrase"},
            "id_full_name",
            "required",
        ),
        (
            {
                "full_name": "x" * 10_000,
                "password1": "a-long-unusual-passphrase",
                "password2": "a-long-unusual-passphrase",
            },
            "id_full_name",
            "at most 150",
        ),
        (
            {
                "full_name": "Bad\x07Name",
                "password1": "a-long-unusual-passphrase",
                "password2": "a-long-unusual-passphrase",
            },
            "id_full_name",
            "Control",
        ),
    ],
)
def test_new_account_form_errors_sit_next_to_their_field(invitation, data, field, message):
    _invitation, token = invitation
    response = Client().post(accept_url(token), data)
    assert response.status_code == 400
    assert message in field_error(response, field)
    assert not User.objects.filter(email="newbie@example.com").exists()


def test_accept_invitation_as_the_signed_in_invitee(org, actors):
    existing = make_user("joiner@example.com")
    invitation, token = invite_member(actor=actors["admin"], org=org, email="joiner@example.com", role="viewer")
    client = Client()
    client.force_login(existing)
    html = text(client.get(accept_url(token)))
    assert "Accept and join Acme" in html
    assert 'name="password1"' not in html
    response = client.post(accept_url(token))
    assert response.status_code == 302
    assert Membership.objects.get(org=org, user=existing).role == Role.VIEWER
    invitation.refresh_from_db()
    assert invitation.status == "accepted"


def test_existing_account_signed_out_is_asked_to_sign_in_first(org, actors):
    make_user("joiner@example.com")
    _invitation, token = invite_member(actor=actors["admin"], org=org, email="joiner@example.com", role="viewer")
    client = Client()
    response = client.get(accept_url(token))
    html = text(response)
    assert "Sign in to accept" in html
    assert f"{reverse('account_login')}?next={accept_url(token)}" in html
    assert 'name="password1"' not in html
    # Posting the form anyway does not create a second account.
    response = client.post(accept_url(token), {"full_name": "X", "password1": "p" * 20, "password2": "p" * 20})
    assert response.status_code == 200
    assert User.objects.filter(email="joiner@example.com").count() == 1
    assert not Membership.objects.filter(org=org, user__email="joiner@example.com").exists()


def test_signed_in_as_someone_else_is_told_so(org, invitation, client_for):
    _invitation, token = invitation
    client = client_for("outsider")
    html = text(client.get(accept_url(token)))
    assert "but you are signed in as" in html
    response = client.post(accept_url(token))
    assert response.status_code == 400
    assert "This invitation is for newbie@example.com" in text(response)
    assert not Membership.objects.filter(org=org, user__email="outsider@elsewhere.test").exists()


def test_expired_invitation_shows_a_clear_message(invitation):
    record, token = invitation
    Invitation.objects.filter(pk=record.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    for response in (Client().get(accept_url(token)), Client().post(accept_url(token), {"full_name": "x"})):
        assert response.status_code == 410
        assert "This invitation has expired" in text(response)
    assert not User.objects.filter(email="newbie@example.com").exists()


def test_revoked_invitation_shows_a_clear_message(invitation, actors):
    record, token = invitation
    revoke_invitation(actor=actors["admin"], invitation=record)
    response = Client().get(accept_url(token))
    assert response.status_code == 410
    assert "This invitation was withdrawn" in text(response)


def test_used_invitation_cannot_be_reused(invitation):
    _record, token = invitation
    accept_invitation(token=token, password="a-long-unusual-passphrase", full_name="First")
    response = Client().post(
        accept_url(token),
        {"full_name": "Second", "password1": "another-long-passphrase", "password2": "another-long-passphrase"},
    )
    assert response.status_code == 410
    assert "already been used" in text(response)
    assert User.objects.get(email="newbie@example.com").full_name == "First"


@pytest.mark.parametrize("token", ["nope", "x" * 5000, "%00", "ünïcode"])
def test_unknown_invitation_tokens_answer_404_with_a_message(db, token):
    response = Client().get(f"/invitations/{token}/")
    assert response.status_code == 404
    assert "not valid" in text(response)


# API tokens --------------------------------------------------------------------------------


def test_create_api_token_shows_the_plaintext_once(org, client_for):
    client = client_for("admin")
    response = client.post(url("token_list", org_slug="acme"), {"name": "Terraform", "role": "developer"})
    assert response.status_code == 200
    match = re.search(r'<code id="new-token">(ghm_[^<]+)</code>', text(response))
    assert match, "plaintext not shown"
    plaintext = match.group(1)
    token = ApiToken.objects.get(org=org, name="Terraform")
    assert token.digest == hashlib.sha256(plaintext.encode()).hexdigest()
    assert token.role == Role.DEVELOPER and token.expires_at is None
    assert "no-store" in response["Cache-Control"]
    event = last_event(org, "api_token.created")
    assert plaintext not in str(event.diff)
    listing = text(client.get(url("token_list", org_slug="acme")))
    assert plaintext not in listing
    assert token.prefix in listing
    assert "Terraform" in listing


def test_create_api_token_with_an_expiry_date(org, client_for):
    day = (timezone.now() + timedelta(days=30)).date()
    response = client_for("admin").post(
        url("token_list", org_slug="acme"), {"name": "CI", "role": "viewer", "expires_on": day.isoformat()}
    )
    assert response.status_code == 200
    token = ApiToken.objects.get(org=org, name="CI")
    assert token.expires_at.date() == day + timedelta(days=1)
    assert (token.expires_at.hour, token.expires_at.minute) == (0, 0)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": "", "role": "viewer"}, "id_name", "required"),
        ({"name": "n" * 10_000, "role": "viewer"}, "id_name", "at most 100"),
        ({"name": "Tab\there", "role": "viewer"}, "id_name", "Control"),
        ({"name": "T", "role": "owner"}, "id_role", "Select a valid choice."),
        ({"name": "T", "role": "viewer", "expires_on": "2001-01-01"}, "id_expires_on", "today or later"),
        ({"name": "T", "role": "viewer", "expires_on": "9999-12-31"}, "id_expires_on", "within five years"),
        ({"name": "T", "role": "viewer", "expires_on": "tomorrow"}, "id_expires_on", "Enter a valid date."),
    ],
)
def test_api_token_form_errors_sit_next_to_their_field(org, client_for, data, field, message):
    response = client_for("admin").post(url("token_list", org_slug="acme"), data)
    assert response.status_code == 400
    assert message in field_error(response, field)
    assert 'id="new-token"' not in text(response)
    assert not ApiToken.objects.filter(org=org).exists()


def test_revoke_api_token_asks_for_confirmation(org, actors, client_for):
    token, _plaintext = create_api_token(actor=actors["admin"], org=org, name="Old", role=Role.VIEWER)
    client = client_for("admin")
    path = url("token_revoke", org_slug="acme", token_id=token.pk)
    response = client.get(path)
    assert response.status_code == 200
    assert "Revoke the token" in text(response)
    response = client.post(path)
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == "revoked"
    assert last_event(org, "api_token.revoked").target_id == str(token.pk)
    assert "Revoked" in text(client.get(url("token_list", org_slug="acme")))


def test_auditor_reads_tokens_but_cannot_create_or_revoke(org, actors, client_for):
    token, _plaintext = create_api_token(actor=actors["admin"], org=org, name="Old", role=Role.VIEWER)
    client = client_for("auditor")
    assert client.get(url("token_list", org_slug="acme")).status_code == 200
    assert client.post(url("token_list", org_slug="acme"), {"name": "X", "role": "viewer"}).status_code == 403
    assert client.post(url("token_revoke", org_slug="acme", token_id=token.pk)).status_code == 403
    assert ApiToken.objects.filter(org=org).count() == 1


# Settings ----------------------------------------------------------------------------------


def test_change_settings_through_the_page(org, client_for):
    response = client_for("admin").post(url("settings", org_slug="acme"), {"name": "Acme Inc", "require_mfa": "on"})
    assert response.status_code == 302
    org.refresh_from_db()
    assert (org.name, org.require_mfa) == ("Acme Inc", True)
    assert last_event(org, "org.settings_changed").diff["require_mfa"] == {"before": False, "after": True}


@pytest.mark.parametrize(("name", "message"), [("", "required"), ("o" * 10_000, "at most 100"), ("A\x1bB", "Control")])
def test_settings_errors_sit_next_to_the_field(org, client_for, name, message):
    response = client_for("admin").post(url("settings", org_slug="acme"), {"name": name})
    assert response.status_code == 400
    assert message in field_error(response, "id_name")
    org.refresh_from_db()
    assert org.name == "Acme"


def test_settings_are_for_org_managers_only(org, client_for):
    assert client_for("auditor").get(url("settings", org_slug="acme")).status_code == 403
    assert client_for("finance").post(url("settings", org_slug="acme"), {"name": "X"}).status_code == 403


# Query counts ------------------------------------------------------------------------------


def count_queries(client, path) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200
    return len(queries)


def add_rows(org, team, kind: str, start: int, count: int, actor) -> None:
    for number in range(start, start + count):
        if kind == "teams":
            create_team(actor=SYSTEM, org=org, name=f"Team {number}")
        elif kind == "members":
            user = make_user(f"member{number}@acme.test")
            org.memberships.create(user=user, role=Role.DEVELOPER)
            add_team_member(actor=SYSTEM, team=team, user=user, team_admin=number % 2 == 0)
        elif kind == "invitations":
            invite_member(actor=actor, org=org, email=f"invitee{number}@example.com", role=Role.VIEWER, team=team)
        elif kind == "tokens":
            create_api_token(actor=actor, org=org, name=f"Token {number}", role=Role.VIEWER)


@pytest.mark.parametrize(
    ("page", "kind"),
    [
        ("team_list", "teams"),
        ("member_list", "members"),
        ("team_detail", "members"),
        ("invitation_list", "invitations"),
        ("token_list", "tokens"),
        ("dashboard", "members"),
    ],
)
def test_list_pages_cost_the_same_queries_for_3_and_30_rows(org, team, actors, client_for, page, kind):
    kwargs = {"org_slug": "acme"}
    if page == "team_detail":
        kwargs["team_id"] = team.pk
    path = url(page, **kwargs)
    client = client_for("admin")
    add_rows(org, team, kind, 0, 3, actors["admin"])
    client.get(path)  # warm caches that are per process, not per row (content types, sessions)
    few = count_queries(client, path)
    add_rows(org, team, kind, 3, 27, actors["admin"])
    many = count_queries(client, path)
    assert few == many


# Sign-in, password reset and two-factor pages ----------------------------------------------


def test_sign_in_page_uses_the_portal_layout_and_signs_in(org, users):
    client = Client()
    response = client.get(reverse("account_login"))
    html = text(response)
    assert response.status_code == 200
    assert "Sign in to Gatehouse" in html and "skip-link" in html
    assert "sign up" not in html.lower()
    assert_every_control_labelled(response)
    response = client.post(reverse("account_login"), {"login": "viewer@acme.test", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(url("home")).url == url("dashboard", org_slug="acme")
    assert last_event(org, "auth.login").actor_label == "viewer@acme.test"


def test_wrong_password_is_an_error_on_the_form(org, users):
    response = Client().post(reverse("account_login"), {"login": "viewer@acme.test", "password": "wrong"})
    assert response.status_code == 200
    assert "form-errors" in text(response)


def test_sign_up_is_closed(db):
    response = Client().get(reverse("account_signup"))
    assert "Sign Up Closed" in text(response)
    assert "skip-link" in text(response)


def test_sign_out_and_password_pages_render_in_the_portal_layout(org, client_for):
    client = client_for("viewer")
    for name in ["account_logout", "account_change_password"]:
        response = client.get(reverse(name))
        assert response.status_code == 200
        assert "skip-link" in text(response)
        assert_every_control_labelled(response)
    response = Client().get(reverse("account_reset_password"))
    assert response.status_code == 200
    assert "skip-link" in text(response)
    response = Client().post(reverse("account_reset_password"), {"email": "viewer@acme.test"})
    assert response.status_code == 302


def current_totp(secret: str) -> str:
    counter = list(yield_hotp_counters_from_time())[len(list(yield_hotp_counters_from_time())) // 2]
    return format_hotp_value(hotp_value(secret, counter))


def test_two_factor_set_up_recovery_codes_and_sign_in(org, users):
    client = Client()
    client.post(reverse("account_login"), {"login": "admin@acme.test", "password": PASSWORD})
    # allauth asks for the password again before a change of second factor.
    response = client.get(reverse("mfa_activate_totp"), follow=True)
    assert "Confirm Access" in text(response) and "skip-link" in text(response)
    assert_every_control_labelled(response)
    response = client.post(
        reverse("account_reauthenticate") + "?next=" + reverse("mfa_activate_totp"), {"password": PASSWORD}
    )
    assert response.status_code == 302
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 200
    html = text(response)
    assert "Set up two-factor authentication" in html and "skip-link" in html
    assert_every_control_labelled(response)
    secret = re.search(r'id="authenticator_secret" value="([A-Z2-7=]+)"', html).group(1)
    response = client.post(reverse("mfa_activate_totp"), {"code": current_totp(secret)})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=users["admin"], type=Authenticator.Type.TOTP).exists()

    response = client.get(reverse("mfa_view_recovery_codes"))
    assert response.status_code == 200
    codes = re.search(r'<textarea[^>]*id="recovery_codes"[^>]*>(.*?)</textarea>', text(response), re.S).group(1).split()
    assert len(codes) >= 5
    assert client.get(reverse("mfa_index")).status_code == 200

    client.post(reverse("account_logout"))
    response = client.post(reverse("account_login"), {"login": "admin@acme.test", "password": PASSWORD})
    assert response.status_code == 302
    response = client.get(response.url)
    assert "Two-Factor Authentication" in text(response)
    assert "skip-link" in text(response)
    response = client.post(reverse("mfa_authenticate"), {"code": "000000"})
    assert "form-errors" in text(response) or "errorlist" in text(response)
    response = client.post(reverse("mfa_authenticate"), {"code": codes[0]})
    assert response.status_code == 302
    assert client.get(url("dashboard", org_slug="acme")).status_code == 200


def test_required_mfa_sends_an_admin_to_set_up_first(org, client_for):
    update_org_settings(actor=SYSTEM, org=org, name=org.name, require_mfa=True)
    response = client_for("admin").get(url("dashboard", org_slug="acme"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("mfa_activate_totp"))


def test_error_pages_use_the_portal_layout(org, client_for):
    response = client_for("viewer").get(url("settings", org_slug="acme"))
    assert response.status_code == 403
    assert "You may not do this" in text(response)
    response = client_for("viewer").get(url("dashboard", org_slug="nope"))
    assert response.status_code == 404
    assert "Page not found" in text(response)


def test_org_admins_set_team_limits_and_team_admins_cannot(org, team, client_for, actors, users, fresh_key_ring):
    from orgs.services import set_team_admin
    from tests.factories import make_routes

    make_routes(org, actors["admin"])
    path = reverse("orgs:team_limits", kwargs={"org_slug": "acme", "team_id": team.pk})
    response = client_for("admin").post(path, {"allowed_models": ["gpt-4o"], "rpm_limit": "60", "tpm_limit": ""})
    assert response.status_code == 302
    team.refresh_from_db()
    assert (team.allowed_models, team.rpm_limit, team.tpm_limit) == (["gpt-4o"], 60, None)
    assert AuditEvent.objects.filter(org=org, action="team.limits_changed").exists()
    set_team_admin(actor=actors["admin"], team=team, user=users["developer"], team_admin=True)
    assert client_for("developer").post(path, {"rpm_limit": "1000"}).status_code == 403
    bad = client_for("admin").post(path, {"allowed_models": ["nope"], "rpm_limit": "0"})
    assert bad.status_code == 400
    assert "rpm_limit" in bad.context["limits_form"].errors
    assert "allowed_models" in bad.context["limits_form"].errors

"""The org-scoped REST API: /api/v1/orgs/ and /api/v1/orgs/<org_slug>/{teams,members,invitations,api-tokens}/."""

from datetime import timedelta

import pytest
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from orgs.access import is_team_admin
from orgs.models import ApiToken, Invitation, Membership, Team, TeamMembership
from orgs.services import (
    add_team_member,
    create_api_token,
    create_org,
    create_team,
    invite_member,
    revoke_api_token,
    set_team_admin,
)
from orgs.tasks import send_invitation_email
from orgs.tokens import digest
from tests.conftest import SYSTEM, make_user


def url(name: str, *args) -> str:
    return reverse(f"api:orgs:{name}", args=args)


def post(client: Client, path: str, data=None, **extra):
    return client.post(path, data if data is not None else {}, content_type="application/json", **extra)


def patch(client: Client, path: str, data, **extra):
    return client.patch(path, data, content_type="application/json", **extra)


def last_event(org) -> AuditEvent:
    return AuditEvent.objects.filter(org=org).order_by("-sequence").first()


def assert_event(org, action: str, actor_id: str) -> AuditEvent:
    event = last_event(org)
    assert (event.action, event.actor_id) == (action, actor_id)
    return event


def token_client(org, role: str, **fields) -> tuple[Client, ApiToken]:
    token, plaintext = create_api_token(actor=SYSTEM, org=org, name=f"{role} automation", role=role, **fields)
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}"), token


@pytest.fixture
def other_team(other_org):
    return other_org.teams.get()


@pytest.fixture
def team_admin(team, users):
    """The developer, made team admin of `team`."""
    set_team_admin(actor=SYSTEM, team=team, user=users["developer"], team_admin=True)
    return users["developer"]


# Who may call at all ------------------------------------------------------------------------


def test_unauthenticated_requests_get_401(org):
    client = Client()
    for response in (client.get(url("org-list")), post(client, url("team-list", "acme"), {"name": "Data"})):
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Bearer"
    assert not Team.objects.filter(name="Data").exists()


def test_outsiders_get_404_and_lower_roles_403(client_for, org, other_org):
    assert client_for("outsider").get(url("team-list", "acme")).status_code == 404
    assert client_for("owner").get(url("team-list", "other")).status_code == 404
    assert client_for("owner").get(url("team-list", "no-such-org")).status_code == 404
    assert client_for("viewer").get(url("member-list", "acme")).status_code == 403
    assert client_for("developer").get(url("invitation-list", "acme")).status_code == 403
    response = post(client_for("finance"), url("team-list", "acme"), {"name": "Data"})
    assert response.status_code == 403
    assert response.json() == {"detail": "Your role (finance) may not do this."}


def test_session_post_without_csrf_token_is_refused(users, org):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["admin"])
    response = post(client, url("team-list", "acme"), {"name": "Data"})
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Team.objects.filter(org=org, name="Data").exists()

    secret = "abcdefghijklmnopqrstuvwxyzABCDEF"
    client.cookies[settings.CSRF_COOKIE_NAME] = secret
    assert post(client, url("team-list", "acme"), {"name": "Data"}, HTTP_X_CSRFTOKEN=secret).status_code == 201


def test_owners_and_admins_must_set_up_mfa_before_using_the_api_over_a_session(client_for, org, users):
    org.__class__.objects.filter(pk=org.pk).update(require_mfa=True)
    response = client_for("admin").get(url("team-list", "acme"))
    assert (response.status_code, response.json()) == (
        403,
        {"detail": "Set up two-factor authentication before using the API."},
    )
    assert post(client_for("owner"), url("team-list", "acme"), {"name": "Data"}).status_code == 403
    assert client_for("viewer").get(url("team-list", "acme")).status_code == 200
    admin_token, _ = token_client(org, "admin")
    assert admin_token.get(url("team-list", "acme")).status_code == 200
    Authenticator.objects.create(user=users["admin"], type=Authenticator.Type.TOTP, data={})
    assert client_for("admin").get(url("team-list", "acme")).status_code == 200


def test_schema_endpoint_describes_the_api(client):
    response = client.get(reverse("api-schema"), {"format": "json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/orgs/{org_slug}/teams/{team_id}/members/{user_id}/" in paths
    assert "/api/v1/orgs/{org_slug}/audit-events/" in paths


# Management API tokens as the principal --------------------------------------------------


def test_token_authenticates_within_its_role(org, team):
    viewer, _ = token_client(org, "viewer")
    assert viewer.get(url("team-list", "acme")).status_code == 200
    assert post(viewer, url("team-list", "acme"), {"name": "Data"}).status_code == 403
    assert viewer.get(url("member-list", "acme")).status_code == 403

    admin, token = token_client(org, "admin")
    response = post(admin, url("team-list", "acme"), {"name": "Data"})
    assert response.status_code == 201
    event = assert_event(org, "team.created", str(token.pk))
    assert (event.actor_type, event.actor_label) == ("token", "API token admin automation")


def test_token_without_csrf_token_is_accepted(org):
    client, _ = token_client(org, "admin")
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=client.defaults["HTTP_AUTHORIZATION"])
    assert post(client, url("team-list", "acme"), {"name": "Data"}).status_code == 201


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer two words",
        "Bearer ghm_not-a-token-anyone-issued",
        "Bearer " + "x" * 300,
        "Basic dXNlcjpwYXNzd29yZA==",
        "Token ghm_abc",
    ],
)
def test_malformed_or_unknown_bearer_token_gets_401(org, header):
    response = Client(HTTP_AUTHORIZATION=header).get(url("team-list", "acme"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_revoked_and_expired_tokens_get_401(org):
    revoked, token = token_client(org, "admin")
    assert revoked.get(url("team-list", "acme")).status_code == 200
    revoke_api_token(actor=SYSTEM, token=token)
    assert revoked.get(url("team-list", "acme")).status_code == 401

    expired, token = token_client(org, "admin", expires_at=timezone.now() + timedelta(hours=1))
    assert expired.get(url("team-list", "acme")).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expired.get(url("team-list", "acme")).status_code == 401


def test_another_orgs_token_gets_404(org, other_org, team):
    foreign, _ = token_client(other_org, "owner")
    assert foreign.get(url("team-list", "acme")).status_code == 404
    assert foreign.get(url("team-detail", "acme", team.pk)).status_code == 404
    assert post(foreign, url("team-list", "acme"), {"name": "Data"}).status_code == 404
    assert [o["slug"] for o in foreign.get(url("org-list")).json()["results"]] == ["other"]


def test_token_cannot_reach_another_orgs_objects_through_its_own_org(org, other_team):
    admin, _ = token_client(org, "admin")
    assert admin.get(url("team-detail", "acme", other_team.pk)).status_code == 404
    assert patch(admin, url("team-detail", "acme", other_team.pk), {"name": "Mine"}).status_code == 404
    other_team.refresh_from_db()
    assert other_team.name == "Other team"


def test_token_whose_role_cannot_manage_teams_gets_403_on_team_writes(org, team):
    viewer, _ = token_client(org, "viewer")
    assert patch(viewer, url("team-detail", "acme", team.pk), {"name": "Renamed"}).status_code == 403


# Organizations ---------------------------------------------------------------------------


def test_org_list_shows_the_users_orgs_with_role(client_for, org, other_org, users):
    create_org(actor=SYSTEM, name="Beta", slug="beta", owner=users["viewer"], require_mfa=False)
    response = client_for("viewer").get(url("org-list"))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [(o["slug"], o["name"], o["role"]) for o in body["results"]] == [
        ("acme", "Acme", "viewer"),
        ("beta", "Beta", "owner"),
    ]
    assert body["results"][0]["id"] == str(org.pk)
    assert client_for("outsider").get(url("org-list")).json()["results"] == []


def test_org_list_for_a_token_is_its_own_org(org, other_org):
    client, _ = token_client(org, "auditor")
    results = client.get(url("org-list")).json()["results"]
    assert results == [{"id": str(org.pk), "name": "Acme", "slug": "acme", "role": "auditor"}]


# Teams -----------------------------------------------------------------------------------


def test_team_list_searches_and_paginates(client_for, org, team, other_org):
    create_team(actor=SYSTEM, org=org, name="Data science")
    client = client_for("viewer")
    body = client.get(url("team-list", "acme")).json()
    assert [t["name"] for t in body["results"]] == ["Data science", "Platform"]
    platform = body["results"][1]
    assert platform == {
        "id": str(team.pk),
        "name": "Platform",
        "slug": "platform",
        "description": "The platform team",
        "member_count": 2,
        "allowed_models": [],
        "rpm_limit": None,
        "tpm_limit": None,
        "created_at": platform["created_at"],
    }
    assert [t["name"] for t in client.get(url("team-list", "acme"), {"q": "PLAT"}).json()["results"]] == ["Platform"]
    page = client.get(url("team-list", "acme"), {"limit": 1}).json()
    assert (page["count"], len(page["results"])) == (2, 1)
    assert "offset=1" in page["next"]
    assert client.get(url("team-list", "acme"), {"q": "x" * 101}).status_code == 400


def test_create_team(client_for, org, users):
    response = post(
        client_for("admin"), url("team-list", "acme"), {"name": "  Data science ", "description": " Models "}
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["name"], body["slug"], body["description"], body["member_count"]) == (
        "Data science",
        "data-science",
        "Models",
        0,
    )
    team = Team.objects.get(pk=body["id"], org=org)
    event = assert_event(org, "team.created", str(users["admin"].uuid))
    assert event.target_id == str(team.pk)


@pytest.mark.parametrize(
    ("name", "slug", "expected_slug"),
    [("Équipe 🚀 données", "", "equipe-donnees"), ("日本チーム", "japan", "japan"), ("Ops", "", "ops")],
)
def test_create_team_with_unicode_names(client_for, org, name, slug, expected_slug):
    response = post(client_for("owner"), url("team-list", "acme"), {"name": name, "slug": slug})
    assert response.status_code == 201, response.json()
    assert (response.json()["name"], response.json()["slug"]) == (name, expected_slug)


BAD_TEAM_INPUT = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": None}, "name"),
    ({"name": "x" * 10_000}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "Bell\x07"}, "name"),
    ({"name": "Line\nbreak"}, "name"),
    ({"name": "Escape\x1b[31m"}, "name"),
    ({"name": "Right\u202eto left"}, "name"),
    ({"name": "Zero\u200bwidth"}, "name"),
    ({"name": "Nul\x00"}, "name"),
    ({"name": 42}, "name"),
    ({"name": True}, "name"),
    ({"name": ["Data"]}, "name"),
    ({"name": {"text": "Data"}}, "name"),
    ({"name": "!!!"}, "name"),
    ({"name": "Data", "description": "d" * 501}, "description"),
    ({"name": "Data", "description": "Tab\tseparated"}, "description"),
    ({"name": "Data", "description": 7}, "description"),
    ({"name": "Data", "slug": "not a slug"}, "slug"),
    ({"name": "Data", "slug": "s" * 51}, "slug"),
]


@pytest.mark.parametrize(("data", "field"), BAD_TEAM_INPUT)
def test_create_team_rejects_bad_input_with_field_errors(client_for, org, data, field):
    response = post(client_for("admin"), url("team-list", "acme"), data)
    assert response.status_code == 400
    body = response.json()
    assert list(body) == [field]
    assert all(isinstance(message, str) for message in body[field])
    assert not Team.objects.filter(org=org).exists()


def test_create_team_rejects_a_duplicate_name(client_for, org, team):
    response = post(client_for("admin"), url("team-list", "acme"), {"name": "PLATFORM", "slug": "platform-2"})
    assert response.status_code == 400
    assert response.json() == {"name": ["A team with this name already exists."]}


@pytest.mark.parametrize(
    ("body", "content_type", "key"),
    [
        ('{"name": ', "application/json", "detail"),
        ("not json at all", "application/json", "detail"),
        ('["Data"]', "application/json", "non_field_errors"),
        ('"Data"', "application/json", "non_field_errors"),
        ('{"name": "\\ud800"}', "application/json", "name"),
        ("name=Data", "text/plain", "detail"),
    ],
)
def test_malformed_bodies_get_4xx_json(client_for, org, body, content_type, key):
    response = client_for("admin").post(url("team-list", "acme"), body, content_type=content_type)
    assert response.status_code in {400, 415}
    assert key in response.json()
    assert not Team.objects.filter(org=org).exists()


def test_team_detail(client_for, org, team, other_team):
    client = client_for("viewer")
    body = client.get(url("team-detail", "acme", team.pk)).json()
    assert (body["id"], body["name"], body["member_count"]) == (str(team.pk), "Platform", 2)
    assert client.get(url("team-detail", "acme", other_team.pk)).status_code == 404
    assert client.get(url("team-detail", "acme", "6f1c1f4e-0000-4000-8000-000000000000")).status_code == 404


def test_update_team(client_for, org, team, users):
    response = patch(client_for("admin"), url("team-detail", "acme", team.pk), {"name": "Platform eng"})
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["description"]) == ("Platform eng", "The platform team")
    event = assert_event(org, "team.updated", str(users["admin"].uuid))
    assert event.diff == {"name": {"before": "Platform", "after": "Platform eng"}}

    response = patch(client_for("admin"), url("team-detail", "acme", team.pk), {"description": ""})
    assert (response.json()["name"], response.json()["description"]) == ("Platform eng", "")


@pytest.mark.parametrize(
    ("data", "field"), [({"name": ""}, "name"), ({"name": "a\x00b"}, "name"), ({"name": 1}, "name")]
)
def test_update_team_rejects_bad_input(client_for, org, team, data, field):
    response = patch(client_for("admin"), url("team-detail", "acme", team.pk), data)
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_team_admin_manages_their_own_team_but_cannot_delete_it(client_for, org, team, team_admin, users):
    client = client_for("developer")
    assert patch(client, url("team-detail", "acme", team.pk), {"name": "Platform eng"}).status_code == 200
    assert_event(org, "team.updated", str(team_admin.uuid))
    response = post(client, url("team-member-list", "acme", team.pk), {"user": str(users["finance"].uuid)})
    assert response.status_code == 201
    assert client.delete(url("team-detail", "acme", team.pk)).status_code == 403

    elsewhere = create_team(actor=SYSTEM, org=org, name="Elsewhere")
    assert patch(client, url("team-detail", "acme", elsewhere.pk), {"name": "Mine"}).status_code == 403


def test_developer_who_is_not_team_admin_cannot_change_the_team(client_for, team):
    assert patch(client_for("developer"), url("team-detail", "acme", team.pk), {"name": "X"}).status_code == 403


def test_delete_team(client_for, org, team, users, other_team):
    client = client_for("admin")
    assert client.delete(url("team-detail", "acme", other_team.pk)).status_code == 404
    assert Team.objects.filter(pk=other_team.pk).exists()
    assert client.delete(url("team-detail", "acme", team.pk)).status_code == 204
    assert not Team.objects.filter(pk=team.pk).exists()
    assert_event(org, "team.deleted", str(users["admin"].uuid))


# Team members ----------------------------------------------------------------------------


def test_team_member_list(client_for, team, team_admin, users):
    body = client_for("viewer").get(url("team-member-list", "acme", team.pk)).json()
    assert body["count"] == 2
    developer, viewer = body["results"]
    assert developer == {
        "user": str(users["developer"].uuid),
        "email": "developer@acme.test",
        "full_name": "Developer",
        "team_admin": True,
        "joined_at": developer["joined_at"],
    }
    assert (viewer["email"], viewer["team_admin"]) == ("viewer@acme.test", False)


def test_add_team_member_by_uuid_or_email(client_for, org, team, users):
    client = client_for("admin")
    response = post(client, url("team-member-list", "acme", team.pk), {"user": str(users["finance"].uuid)})
    assert response.status_code == 201
    assert (response.json()["email"], response.json()["team_admin"]) == ("finance@acme.test", False)
    assert_event(org, "team.member_added", str(users["admin"].uuid))

    response = post(client, url("team-member-list", "acme", team.pk), {"user": "Auditor@ACME.test", "team_admin": True})
    assert response.status_code == 201
    assert (response.json()["user"], response.json()["team_admin"]) == (str(users["auditor"].uuid), True)
    assert is_team_admin(users["auditor"], team)
    event = assert_event(org, "team.member_added", str(users["admin"].uuid))
    assert event.diff["team_admin"] == {"after": True}


def test_add_team_member_refuses_people_outside_the_org(client_for, org, team, other_org, users):
    client = client_for("admin")
    stranger = Membership.objects.get(org=other_org).user
    for reference in (str(stranger.uuid), stranger.email, str(users["outsider"].uuid), "nobody@nowhere.test"):
        response = post(client, url("team-member-list", "acme", team.pk), {"user": reference})
        assert response.status_code == 404, reference
    assert not TeamMembership.objects.filter(team=team, user__in=[stranger, users["outsider"]]).exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "user"),
        ({"user": "not-an-id"}, "user"),
        ({"user": 12}, "user"),
        ({"user": "x" * 10_000}, "user"),
        ({"user": "developer@acme.test", "team_admin": "maybe"}, "team_admin"),
        ({"user": "developer@acme.test", "team_admin": None}, "team_admin"),
    ],
)
def test_add_team_member_rejects_bad_input(client_for, team, data, field):
    response = post(client_for("admin"), url("team-member-list", "acme", team.pk), data)
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_add_team_member_twice_is_a_field_error(client_for, team, users):
    response = post(client_for("admin"), url("team-member-list", "acme", team.pk), {"user": "developer@acme.test"})
    assert response.status_code == 400
    assert response.json() == {"user": ["This person is already in the team."]}


def test_set_team_admin(client_for, org, team, users):
    client = client_for("admin")
    path = url("team-member-detail", "acme", team.pk, users["viewer"].uuid)
    response = patch(client, path, {"team_admin": True})
    assert response.status_code == 200
    assert response.json()["team_admin"] is True
    assert is_team_admin(users["viewer"], team)
    assert_event(org, "team.admin_granted", str(users["admin"].uuid))

    assert patch(client, path, {}).status_code == 400
    assert patch(client, path, {"team_admin": "perhaps"}).json() == {"team_admin": ["Must be a valid boolean."]}
    not_in_team = url("team-member-detail", "acme", team.pk, users["finance"].uuid)
    assert patch(client, not_in_team, {"team_admin": True}).status_code == 404


def test_remove_team_member(client_for, org, team, users, other_team):
    client = client_for("admin")
    assert client.delete(url("team-member-detail", "acme", team.pk, users["viewer"].uuid)).status_code == 204
    assert not TeamMembership.objects.filter(team=team, user=users["viewer"]).exists()
    assert_event(org, "team.member_removed", str(users["admin"].uuid))
    assert client.delete(url("team-member-detail", "acme", team.pk, users["viewer"].uuid)).status_code == 404
    stranger = other_team.org.memberships.get().user
    add_team_member(actor=SYSTEM, team=other_team, user=stranger)
    assert client.delete(url("team-member-detail", "acme", other_team.pk, stranger.uuid)).status_code == 404
    assert TeamMembership.objects.filter(team=other_team, user=stranger).exists()


# Members ---------------------------------------------------------------------------------


def test_member_list_filters(client_for, org, users):
    client = client_for("developer")
    body = client.get(url("member-list", "acme")).json()
    assert body["count"] == 6
    admin = next(m for m in body["results"] if m["role"] == "admin")
    membership = Membership.objects.get(org=org, user=users["admin"])
    assert admin == {
        "id": str(membership.pk),
        "user": str(users["admin"].uuid),
        "email": "admin@acme.test",
        "full_name": "Admin",
        "role": "admin",
        "joined_at": admin["joined_at"],
    }
    assert [m["email"] for m in client.get(url("member-list", "acme"), {"role": "finance"}).json()["results"]] == [
        "finance@acme.test"
    ]
    assert [m["email"] for m in client.get(url("member-list", "acme"), {"q": "AUDIT"}).json()["results"]] == [
        "auditor@acme.test"
    ]
    response = client.get(url("member-list", "acme"), {"role": "superuser"})
    assert response.status_code == 400
    assert list(response.json()) == ["role"]


def test_member_detail(client_for, org, other_org, users):
    client = client_for("auditor")
    membership = Membership.objects.get(org=org, user=users["viewer"])
    assert client.get(url("member-detail", "acme", membership.pk)).json()["email"] == "viewer@acme.test"
    foreign = Membership.objects.get(org=other_org)
    assert client.get(url("member-detail", "acme", foreign.pk)).status_code == 404


def test_change_role(client_for, org, users):
    client = client_for("admin")
    membership = Membership.objects.get(org=org, user=users["developer"])
    response = patch(client, url("member-detail", "acme", membership.pk), {"role": "finance"})
    assert response.status_code == 200
    assert response.json()["role"] == "finance"
    membership.refresh_from_db()
    assert membership.role == "finance"
    event = assert_event(org, "member.role_changed", str(users["admin"].uuid))
    assert event.diff == {"role": {"before": "developer", "after": "finance"}}


def test_change_role_refusals(client_for, org, other_org, users):
    client = client_for("admin")
    developer = Membership.objects.get(org=org, user=users["developer"])
    owner = Membership.objects.get(org=org, user=users["owner"])
    own = Membership.objects.get(org=org, user=users["admin"])
    cases = [
        (developer, {"role": "owner"}, "You cannot grant a role with more rights than your own."),
        (owner, {"role": "viewer"}, "You cannot change the role of someone with more rights than you."),
        (own, {"role": "viewer"}, "You cannot change your own role."),
    ]
    for membership, data, message in cases:
        response = patch(client, url("member-detail", "acme", membership.pk), data)
        assert (response.status_code, response.json()) == (400, {"role": [message]})
    for data in ({"role": "superuser"}, {"role": ""}, {"role": None}, {"role": ["admin"]}, {}):
        response = patch(client, url("member-detail", "acme", developer.pk), data)
        assert response.status_code == 400, data
        assert list(response.json()) == ["role"]
    foreign = Membership.objects.get(org=other_org)
    assert patch(client, url("member-detail", "acme", foreign.pk), {"role": "viewer"}).status_code == 404
    assert (
        patch(client_for("auditor"), url("member-detail", "acme", developer.pk), {"role": "viewer"}).status_code == 403
    )
    developer.refresh_from_db()
    assert developer.role == "developer"


def test_remove_member(client_for, org, team, users):
    client = client_for("admin")
    viewer = Membership.objects.get(org=org, user=users["viewer"])
    assert client.delete(url("member-detail", "acme", viewer.pk)).status_code == 204
    assert not Membership.objects.filter(pk=viewer.pk).exists()
    assert not TeamMembership.objects.filter(team=team, user=users["viewer"]).exists()
    assert_event(org, "member.removed", str(users["admin"].uuid))

    owner = Membership.objects.get(org=org, user=users["owner"])
    response = client.delete(url("member-detail", "acme", owner.pk))
    assert response.json() == {"member": ["You cannot remove someone with more rights than you."]}


# Invitations -----------------------------------------------------------------------------


def test_invitation_is_emailed_and_its_token_never_returned(
    client_for, org, team, users, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr(send_invitation_email, "delay", lambda *args: queued.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        response = post(
            client_for("admin"),
            url("invitation-list", "acme"),
            {"email": "New.Person@Example.com", "role": "developer", "team": str(team.pk)},
        )
    assert response.status_code == 201
    body = response.json()
    invitation = Invitation.objects.get(pk=body["id"], org=org)
    assert body == {
        "id": str(invitation.pk),
        "email": "new.person@example.com",
        "role": "developer",
        "team": {"id": str(team.pk), "name": "Platform"},
        "status": "pending",
        "invited_by": "admin@acme.test",
        "created_at": body["created_at"],
        "expires_at": body["expires_at"],
        "accepted_at": None,
        "revoked_at": None,
    }
    [(invitation_id, token)] = queued
    assert invitation_id == str(invitation.pk)
    assert digest(token) == invitation.token_digest
    assert token not in response.content.decode()
    assert_event(org, "member.invited", str(users["admin"].uuid))

    listed = client_for("auditor").get(url("invitation-list", "acme"))
    assert [i["id"] for i in listed.json()["results"]] == [str(invitation.pk)]
    assert token not in listed.content.decode()


def test_invitation_refuses_another_orgs_team(client_for, org, other_team):
    data = {"email": "new@example.com", "role": "viewer", "team": str(other_team.pk)}
    assert post(client_for("admin"), url("invitation-list", "acme"), data).status_code == 404
    assert not Invitation.objects.exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"role": "viewer"}, "email"),
        ({"email": "not an email", "role": "viewer"}, "email"),
        ({"email": "a@b.test\nBcc: all@example.com", "role": "viewer"}, "email"),
        ({"email": "a\x07@b.test", "role": "viewer"}, "email"),
        ({"email": "x" * 10_000 + "@example.com", "role": "viewer"}, "email"),
        ({"email": ["a@b.test"], "role": "viewer"}, "email"),
        ({"email": "a@b.test", "role": "emperor"}, "role"),
        ({"email": "a@b.test"}, "role"),
        ({"email": "a@b.test", "role": "owner"}, "role"),
        ({"email": "a@b.test", "role": "viewer", "team": "not-a-uuid"}, "team"),
        ({"email": "a@b.test", "role": "viewer", "team": 5}, "team"),
        ({"email": "viewer@acme.test", "role": "viewer"}, "email"),
    ],
)
def test_invitation_rejects_bad_input(client_for, org, users, data, field):
    response = post(client_for("admin"), url("invitation-list", "acme"), data)
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not Invitation.objects.exists()


def test_revoke_invitation(client_for, org, other_org, users, actors):
    invitation, _ = invite_member(actor=actors["admin"], org=org, email="new@example.com", role="viewer")
    client = client_for("admin")
    response = post(client, url("invitation-revoke", "acme", invitation.pk))
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert_event(org, "member.invitation_revoked", str(users["admin"].uuid))
    again = post(client, url("invitation-revoke", "acme", invitation.pk))
    assert (again.status_code, again.json()) == (400, {"invitation": ["This invitation is already revoked."]})

    foreign, _ = invite_member(actor=SYSTEM, org=other_org, email="x@example.com", role="viewer")
    assert post(client, url("invitation-revoke", "acme", foreign.pk)).status_code == 404
    assert post(client_for("developer"), url("invitation-revoke", "acme", invitation.pk)).status_code == 403
    foreign.refresh_from_db()
    assert foreign.status == "pending"


# API tokens ------------------------------------------------------------------------------


def test_api_token_plaintext_is_shown_once(client_for, org, users):
    client = client_for("admin")
    response = post(client, url("api-token-list", "acme"), {"name": " CI deploys ", "role": "developer"})
    assert response.status_code == 201
    body = response.json()
    plaintext = body["token"]
    token = ApiToken.objects.get(pk=body["id"], org=org)
    assert plaintext.startswith("ghm_")
    assert token.digest == digest(plaintext)
    assert (body["name"], body["role"], body["prefix"], body["status"]) == (
        "CI deploys",
        "developer",
        token.prefix,
        "active",
    )
    assert (body["created_by"], body["expires_at"], body["revoked_at"]) == ("admin@acme.test", None, None)
    event = assert_event(org, "api_token.created", str(users["admin"].uuid))
    assert plaintext not in str(event.diff)

    listed = client.get(url("api-token-list", "acme"))
    assert listed.status_code == 200
    assert "token" not in listed.json()["results"][0]
    assert plaintext not in listed.content.decode()

    bearer = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert bearer.get(url("team-list", "acme")).status_code == 200
    revoked = post(client, url("api-token-revoke", "acme", token.pk))
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert plaintext not in revoked.content.decode()
    assert_event(org, "api_token.revoked", str(users["admin"].uuid))
    assert bearer.get(url("team-list", "acme")).status_code == 401


def test_api_token_with_expiry(client_for, org):
    expires_at = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    response = post(
        client_for("owner"),
        url("api-token-list", "acme"),
        {"name": "Quarterly", "role": "auditor", "expires_at": expires_at.isoformat()},
    )
    assert response.status_code == 201
    assert ApiToken.objects.get(pk=response.json()["id"]).expires_at == expires_at


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"role": "viewer"}, "name"),
        ({"name": "x" * 10_000, "role": "viewer"}, "name"),
        ({"name": "New\nline", "role": "viewer"}, "name"),
        ({"name": "CI", "role": "root"}, "role"),
        ({"name": "CI", "role": "owner"}, "role"),
        ({"name": "CI", "role": "viewer", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "CI", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "CI", "role": "viewer", "expires_at": 1700000000}, "expires_at"),
    ],
)
def test_api_token_rejects_bad_input(client_for, org, data, field):
    response = post(client_for("admin"), url("api-token-list", "acme"), data)
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not ApiToken.objects.exists()


def test_api_token_revoke_scoping(client_for, org, other_org):
    foreign, _ = create_api_token(actor=SYSTEM, org=other_org, name="Theirs", role="viewer")
    assert post(client_for("admin"), url("api-token-revoke", "acme", foreign.pk)).status_code == 404
    assert client_for("viewer").get(url("api-token-list", "acme")).status_code == 403
    mine, _ = create_api_token(actor=SYSTEM, org=org, name="Mine", role="viewer")
    assert post(client_for("auditor"), url("api-token-revoke", "acme", mine.pk)).status_code == 403
    assert ApiToken.objects.filter(revoked_at__isnull=False).count() == 0


# Constant query counts -------------------------------------------------------------------


def add_rows(kind: str, org, team, count: int, start: int) -> None:
    for i in range(start, start + count):
        if kind == "org-list":
            owner = Membership.objects.get(org=org, role="owner").user
            create_org(actor=SYSTEM, name=f"Org {i}", slug=f"org-{i}", owner=owner, require_mfa=False)
        elif kind == "team-list":
            create_team(actor=SYSTEM, org=org, name=f"Team {i}")
        elif kind in {"member-list", "team-member-list"}:
            user = make_user(f"person{i}@acme.test")
            org.memberships.create(user=user, role="developer")
            add_team_member(actor=SYSTEM, team=team, user=user, team_admin=i % 2 == 0)
        elif kind == "invitation-list":
            invite_member(actor=SYSTEM, org=org, email=f"invitee{i}@example.com", role="viewer", team=team)
        elif kind == "api-token-list":
            create_api_token(actor=SYSTEM, org=org, name=f"Token {i}", role="viewer")


@pytest.mark.parametrize(
    "kind", ["org-list", "team-list", "team-member-list", "member-list", "invitation-list", "api-token-list"]
)
def test_list_query_count_is_constant(client_for, org, team, kind):
    args = () if kind == "org-list" else ("acme", team.pk) if kind == "team-member-list" else ("acme",)
    path = url(kind, *args)
    client = client_for("owner")
    client.get(path)  # the first request may set up the session

    def count_queries(expected_rows: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path)
        assert response.status_code == 200
        assert len(response.json()["results"]) >= expected_rows
        return len(queries)

    add_rows(kind, org, team, 3, start=0)
    few = count_queries(3)
    add_rows(kind, org, team, 27, start=3)
    assert count_queries(30) == few


def test_team_limits_api_sets_the_ceiling_for_keys(client_for, org, team, actors, fresh_key_ring):
    from tests.factories import make_routes

    make_routes(org, actors["admin"])
    path = f"/api/v1/orgs/acme/teams/{team.pk}/limits/"
    body = {"allowed_models": ["gpt-4o"], "rpm_limit": 60, "tpm_limit": None}
    response = client_for("admin").put(path, body, content_type="application/json")
    assert response.status_code == 200, response.json()
    assert response.json()["allowed_models"] == ["gpt-4o"]
    assert response.json()["rpm_limit"] == 60
    refused = client_for("admin").put(path, {**body, "allowed_models": ["no-such"]}, content_type="application/json")
    assert refused.status_code == 400
    assert "allowed_models" in refused.json()
    assert client_for("developer").put(path, body, content_type="application/json").status_code == 403


@pytest.mark.parametrize("field", ["rpm_limit", "tpm_limit"])
@pytest.mark.parametrize("value", ["5", 5.0, True, "", [5]])
def test_team_limits_api_refuses_anything_but_a_whole_number(client_for, org, team, field, value):
    """Issue 12, finding 9: "5" was read as 5. A JSON number or null, nothing else."""
    body = {"allowed_models": [], "rpm_limit": None, "tpm_limit": None, field: value}
    response = client_for("admin").put(url("team-limits", "acme", team.pk), body, content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()) == [field]
    team.refresh_from_db()
    assert (team.rpm_limit, team.tpm_limit) == (None, None)


def test_team_limits_api_refuses_a_string_for_the_model_list(client_for, org, team):
    body = {"allowed_models": "gpt-4o", "rpm_limit": None, "tpm_limit": None}
    response = client_for("admin").put(url("team-limits", "acme", team.pk), body, content_type="application/json")
    assert (response.status_code, list(response.json())) == (400, ["allowed_models"])

"""Rights follow people as they change (issue 12, findings 2 and 3).

An API token never acts with more than its creator holds now, and stops when they leave the org.
A person's own caller keys are revoked when they leave the org or the key's team; the team
service keys they issued stay with the team; the removal pages say which is which beforehand.
"""

import httpx
import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from fleet import services as fleet
from fleet.compile import compile_entity
from fleet.models import ConfigRevision, PendingConfigChange
from keys.models import CallerKey
from keys.services import issue_key
from orgs.models import ApiToken, Membership
from orgs.roles import Role, lower_role
from orgs.services import (
    add_team_member,
    change_role,
    create_api_token,
    create_team,
    remove_member,
    remove_team_member,
    set_team_admin,
)
from tests.conftest import SYSTEM
from tests.plugins.waiting import wait_for


def api(name: str, *args) -> str:
    return reverse(f"api:orgs:{name}", args=args)


def page(name: str, **kwargs) -> str:
    return reverse(f"orgs:{name}", kwargs=kwargs)


def post(client: Client, path: str, data=None):
    return client.post(path, data or {}, content_type="application/json")


def bearer(plaintext: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")


def membership(org, user) -> Membership:
    return Membership.objects.get(org=org, user=user)


def events(org, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(org=org, action=action).order_by("sequence"))


def text(response) -> str:
    return response.content.decode()


@pytest.fixture
def admins_token(org, actors):
    """An admin-role token the admin created: (client, token)."""
    token, plaintext = create_api_token(actor=actors["admin"], org=org, name="terraform", role=Role.ADMIN)
    return bearer(plaintext), token


# What a token acts as ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_role", "creator_role", "acts_as"),
    [
        (Role.ADMIN, Role.OWNER, Role.ADMIN),
        (Role.ADMIN, Role.ADMIN, Role.ADMIN),
        (Role.ADMIN, Role.VIEWER, Role.VIEWER),
        (Role.ADMIN, Role.FINANCE, Role.FINANCE),
        (Role.FINANCE, Role.DEVELOPER, Role.VIEWER),
        # Neither includes the other: the highest role within both.
        (Role.FINANCE, Role.AUDITOR, Role.VIEWER),
        (Role.AUDITOR, Role.DEVELOPER, Role.VIEWER),
    ],
)
def test_lower_role(token_role, creator_role, acts_as):
    assert lower_role(token_role, creator_role) == acts_as
    assert lower_role(creator_role, token_role) == acts_as


def test_a_demoted_creators_token_acts_with_their_new_role(org, actors, users, admins_token):
    client, _token = admins_token
    assert post(client, api("team-list", "acme"), {"name": "Before"}).status_code == 201
    change_role(actor=actors["owner"], membership=membership(org, users["admin"]), role=Role.VIEWER)
    refused = post(client, api("team-list", "acme"), {"name": "After"})
    assert (refused.status_code, refused.json()) == (403, {"detail": "Your role (viewer) may not do this."})
    assert client.get(api("member-list", "acme")).status_code == 403
    assert client.get(api("team-list", "acme")).status_code == 200
    assert client.get(api("org-list")).json()["results"][0]["role"] == "viewer"


def test_promoting_the_creator_again_lifts_the_cap_up_to_the_tokens_own_role(org, actors, users, admins_token):
    client, _token = admins_token
    admin = membership(org, users["admin"])
    change_role(actor=actors["owner"], membership=admin, role=Role.DEVELOPER)
    assert post(client, api("team-list", "acme"), {"name": "Data"}).status_code == 403
    change_role(actor=actors["owner"], membership=admin, role=Role.OWNER)
    assert post(client, api("team-list", "acme"), {"name": "Data"}).status_code == 201
    # The token's own role still binds: an admin token of an owner cannot grant ownership.
    body = {"email": "new@acme.test", "role": "owner"}
    assert post(client, api("invitation-list", "acme"), body).status_code == 400


def test_a_role_change_records_what_each_of_their_tokens_now_acts_as(org, actors, users, admins_token):
    _client, admin_token = admins_token
    viewer_token, _ = create_api_token(actor=actors["admin"], org=org, name="dashboards", role=Role.VIEWER)
    change_role(actor=actors["owner"], membership=membership(org, users["admin"]), role=Role.DEVELOPER)
    (event,) = events(org, "api_token.acting_role_changed")  # the viewer token acts as a viewer still
    assert (event.target_type, event.target_id, event.actor_id) == (
        "api_token",
        str(admin_token.pk),
        actors["owner"].id,
    )
    assert event.diff == {
        "acts_as": {"before": "admin", "after": "developer"},
        "reason": {"after": "Its creator's role changed from admin to developer."},
    }
    assert ApiToken.objects.get(pk=viewer_token.pk).revoked_at is None


def test_the_token_list_says_what_each_token_acts_as(org, actors, users, client_for, admins_token):
    change_role(actor=actors["owner"], membership=membership(org, users["admin"]), role=Role.VIEWER)
    _token, _ = create_api_token(actor=SYSTEM, org=org, name="ci", role=Role.ADMIN)
    rows = client_for("owner").get(api("api-token-list", "acme")).json()["results"]
    assert {row["name"]: (row["role"], row["acts_as"]) for row in rows} == {
        "terraform": ("admin", "viewer"),
        "ci": ("admin", "admin"),  # made by the system: no creator to follow
    }
    shown = text(client_for("owner").get(page("token_list", org_slug="acme")))
    assert "Acts as Viewer: its creator's role now" in shown


def test_removing_the_creator_revokes_their_tokens_with_the_removal(org, actors, users, admins_token):
    client, token = admins_token
    system_token, _ = create_api_token(actor=SYSTEM, org=org, name="ci", role=Role.ADMIN)
    remove_member(actor=actors["owner"], membership=membership(org, users["admin"]))
    response = post(client, api("invitation-list", "acme"), {"email": "new-admin@acme.test", "role": "admin"})
    assert response.status_code == 401
    assert ApiToken.objects.get(pk=token.pk).status == "revoked"
    assert ApiToken.objects.get(pk=system_token.pk).status == "active"
    (event,) = events(org, "api_token.revoked")
    assert (event.target_id, event.diff) == (str(token.pk), {"reason": {"after": "Its creator left the organization."}})
    assert event.sequence < events(org, "member.removed")[0].sequence


def test_a_token_made_by_a_token_follows_the_same_person(org, actors, users, admins_token):
    client, _token = admins_token
    response = post(client, api("api-token-list", "acme"), {"name": "made by terraform", "role": "admin"})
    assert response.status_code == 201
    made = ApiToken.objects.get(pk=response.json()["id"])
    assert made.created_by_id == users["admin"].pk
    remove_member(actor=actors["owner"], membership=membership(org, users["admin"]))
    assert ApiToken.objects.get(pk=made.pk).status == "revoked"
    assert bearer(response.json()["token"]).get(api("team-list", "acme")).status_code == 401


def test_a_token_whose_creator_is_no_longer_a_member_is_refused_even_unrevoked(org, users, admins_token):
    client, token = admins_token
    # As a removal before tokens were revoked with it left things: the membership gone, the token not.
    Membership.objects.filter(org=org, user=users["admin"]).delete()
    response = post(client, api("invitation-list", "acme"), {"email": "new-admin@acme.test", "role": "admin"})
    assert (response.status_code, response["WWW-Authenticate"]) == (401, "Bearer")
    assert response.json() == {"detail": "The person who created this token has left the organization."}
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


# Caller keys of people who leave -----------------------------------------------------------


@pytest.fixture
def data_team(org, actors, users):
    team = create_team(actor=SYSTEM, org=org, name="Data")
    add_team_member(actor=SYSTEM, team=team, user=users["developer"])
    return team


@pytest.fixture
def developers_keys(org, team, data_team, actors, users):
    """The developer, team admin of `team`, holds a key in each team and issued a service key."""
    developer = users["developer"]
    set_team_admin(actor=SYSTEM, team=team, user=developer, team_admin=True)
    issue = actors["developer"]
    return {
        "own": issue_key(actor=issue, team=team, name="laptop", user=developer)[0],
        "own in data": issue_key(actor=issue, team=data_team, name="notebook", user=developer)[0],
        "service": issue_key(actor=issue, team=team, name="nightly batch")[0],
        "someone else's": issue_key(actor=actors["admin"], team=team, name="for the viewer", user=users["viewer"])[0],
    }


def active(keys: dict) -> set[str]:
    return {name for name, key in keys.items() if CallerKey.objects.get(pk=key.pk).revoked_at is None}


def pushed_with(event: AuditEvent) -> list[str]:
    """The key digests one config change carries (recorded with its cause)."""
    changes = PendingConfigChange.objects.filter(entity_type="key", cause=event.pk)
    return sorted(changes.values_list("entity_id", flat=True))


def test_leaving_a_team_revokes_the_keys_held_there_and_nothing_else(org, team, actors, users, developers_keys):
    remove_team_member(actor=actors["admin"], team=team, user=users["developer"])
    assert active(developers_keys) == {"own in data", "service", "someone else's"}
    (event,) = events(org, "key.bulk_revoked")
    assert (event.target_type, event.target_id) == ("user", str(users["developer"].uuid))
    assert event.diff == {
        "revoked": {"after": 1},
        "keys": {"after": [str(developers_keys["own"].pk)]},
        "reason": {"after": "They left the team Platform."},
    }
    assert pushed_with(event) == [developers_keys["own"].digest]
    assert compile_entity("key", developers_keys["own"].digest) is None
    assert compile_entity("key", developers_keys["service"].digest) is not None


def test_leaving_the_org_revokes_every_key_held_in_one_change_and_keeps_the_service_keys(
    org, actors, users, developers_keys
):
    remove_member(actor=actors["admin"], membership=membership(org, users["developer"]))
    assert active(developers_keys) == {"service", "someone else's"}
    (event,) = events(org, "key.bulk_revoked")
    held = [developers_keys["own"], developers_keys["own in data"]]
    assert sorted(event.diff["keys"]["after"]) == sorted(str(key.pk) for key in held)
    assert event.diff["reason"] == {"after": "They left the organization."}
    assert pushed_with(event) == sorted(key.digest for key in held)
    service = CallerKey.objects.get(pk=developers_keys["service"].pk)
    assert (service.user_id, service.created_by_id) == (None, users["developer"].pk)


def test_leaving_a_team_with_no_keys_writes_no_key_event(org, team, actors, users):
    remove_team_member(actor=actors["admin"], team=team, user=users["viewer"])
    assert events(org, "key.bulk_revoked") == []


def test_taking_someone_out_of_a_team_through_the_api_revokes_their_keys_there(
    org, team, users, client_for, developers_keys
):
    path = api("team-member-detail", "acme", team.pk, users["developer"].uuid)
    assert client_for("admin").delete(path).status_code == 204
    assert active(developers_keys) == {"own in data", "service", "someone else's"}


def test_the_member_removal_page_names_the_keys_revoked_and_those_that_stay(
    org, users, client_for, developers_keys, admins_token
):
    path = page("member_remove", org_slug="acme", membership_id=membership(org, users["developer"]).pk)
    shown = text(client_for("admin").get(path))
    revoked, staying = shown.split("Revoked with the removal: 2")[1].split("Staying active: 1")
    assert "laptop" in revoked and "notebook" in revoked
    assert "nightly batch" in staying and "a service key" in staying
    assert "for the viewer" not in shown  # issued by someone else for someone else: not theirs
    admins = page("member_remove", org_slug="acme", membership_id=membership(org, users["admin"]).pk)
    shown = text(client_for("owner").get(admins))
    assert "The 1 API token they created is revoked." in shown
    assert "Staying active: 1" in shown and "for the viewer" in shown  # the admin issued it


def test_the_team_membership_removal_page_asks_first_and_names_the_keys(org, team, users, client_for, developers_keys):
    path = page("team_member_remove", org_slug="acme", team_id=team.pk, user_id=users["developer"].uuid)
    detail = text(client_for("admin").get(page("team_detail", org_slug="acme", team_id=team.pk)))
    assert f'href="{path}"' in detail
    response = client_for("admin").get(path)
    assert response.status_code == 200
    shown = text(response)
    assert "Remove Developer from the team “Platform”?" in shown
    revoked, staying = shown.split("Revoked with the removal: 1")[1].split("Staying active: 1")
    assert "laptop" in revoked and "notebook" not in shown
    assert "nightly batch" in staying
    assert active(developers_keys) == {"own", "own in data", "service", "someone else's"}
    assert client_for("admin").post(path).status_code == 302
    assert active(developers_keys) == {"own in data", "service", "someone else's"}


# On the gateway ----------------------------------------------------------------------------


def models_status(worker, plaintext: str) -> int:
    return httpx.get(f"{worker.url}/v1/models", headers={"Authorization": f"Bearer {plaintext}"}, timeout=5).status_code


@pytest.mark.parametrize("leaves", ["org", "team"])
def test_the_gateway_refuses_a_leavers_own_key_and_serves_the_service_key_they_issued(
    served, org, team, actors, users, gateway_workers, leaves
):
    developer = users["developer"]
    set_team_admin(actor=SYSTEM, team=team, user=developer, team_admin=True)
    _service, service_plaintext = issue_key(actor=actors["developer"], team=team, name="nightly batch")
    fleet.publish_pending()
    (worker,) = gateway_workers(1)
    assert (models_status(worker, served["plaintext"]), models_status(worker, service_plaintext)) == (200, 200)

    if leaves == "org":
        remove_member(actor=actors["admin"], membership=membership(org, developer))
    else:
        remove_team_member(actor=actors["admin"], team=team, user=developer)
    fleet.publish_pending()
    newest = ConfigRevision.objects.order_by("-number").first().number
    assert wait_for(lambda: worker.revision() == newest, 5)
    assert (models_status(worker, served["plaintext"]), models_status(worker, service_plaintext)) == (401, 200)

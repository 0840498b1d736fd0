"""keys.services.mint_playground_key: the short-lived key the playground holds in the browser."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import AuditEvent
from fleet.compile import compile_entity
from fleet.models import PendingConfigChange
from keys.models import CallerKey
from keys.services import MAX_ACTIVE_PLAYGROUND_KEYS, PLAYGROUND_TAG, mint_playground_key
from orgs.services import create_team, set_team_admin, set_team_limits
from tests.conftest import SYSTEM
from tests.factories import make_routes

MODELS = ["claude-sonnet", "gpt-4o"]


@pytest.fixture
def routes(org):
    return make_routes(org, SYSTEM)


@pytest.fixture
def minted(team, users, actors, routes):
    return mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=MODELS)


def test_it_issues_a_key_of_the_person_in_the_team_for_the_models(minted, team, users):
    key, plaintext = minted
    assert (key.team, key.user, key.created_by) == (team, users["developer"], users["developer"])
    assert key.allowed_models == MODELS
    assert key.tags == [PLAYGROUND_TAG]
    assert plaintext.startswith(key.prefix) and key.status == "active"


def test_it_expires_in_fifteen_minutes_and_says_so_in_its_name(minted):
    key, _plaintext = minted
    assert timedelta(minutes=14, seconds=55) < key.expires_at - timezone.now() <= timedelta(minutes=15)
    assert key.name == f"Playground (expires {key.expires_at:%H:%M} UTC)"


def test_its_expiry_reaches_the_gateways(minted):
    key, _plaintext = minted
    assert compile_entity("key", key.digest)["expires_at"] == key.expires_at.timestamp()
    assert PendingConfigChange.objects.filter(entity_type="key", entity_id=key.digest).exists()


def test_it_takes_other_lifetimes(team, users, actors, routes):
    key, _ = mint_playground_key(
        actor=actors["developer"], team=team, user=users["developer"], models=MODELS, minutes=5
    )
    assert key.expires_at - timezone.now() <= timedelta(minutes=5)


@pytest.mark.parametrize("minutes", [0, 61])
def test_it_refuses_lifetimes_out_of_range(team, users, actors, routes, minutes):
    with pytest.raises(ValidationError) as error:
        mint_playground_key(
            actor=actors["developer"], team=team, user=users["developer"], models=MODELS, minutes=minutes
        )
    assert "minutes" in error.value.message_dict


def test_minting_is_an_audit_event_that_marks_the_key_as_the_playgrounds(org, minted, users):
    key, _plaintext = minted
    event = AuditEvent.objects.get(org=org, action="key.issued", target_id=str(key.pk))
    assert event.actor_id == str(users["developer"].uuid)
    assert event.diff["tags"]["after"] == [PLAYGROUND_TAG]
    assert event.diff["expires_at"]["after"] == key.expires_at.isoformat()
    assert event.diff["allowed_models"]["after"] == MODELS


def test_a_developer_cannot_mint_in_a_team_they_are_not_in(org, users, actors, routes):
    elsewhere = create_team(actor=SYSTEM, org=org, name="Elsewhere")
    with pytest.raises(ValidationError) as error:
        mint_playground_key(actor=actors["developer"], team=elsewhere, user=users["developer"], models=MODELS)
    assert "team" in error.value.message_dict
    assert not CallerKey.objects.filter(team=elsewhere).exists()


def test_an_admin_may_mint_in_any_team(org, users, actors, routes):
    elsewhere = create_team(actor=SYSTEM, org=org, name="Elsewhere")
    key, _ = mint_playground_key(actor=actors["admin"], team=elsewhere, user=users["admin"], models=MODELS)
    assert key.user == users["admin"]


def test_a_team_admin_may_mint_in_their_team(team, users, actors, routes):
    set_team_admin(actor=SYSTEM, team=team, user=users["viewer"], team_admin=True)
    key, _ = mint_playground_key(actor=actors["viewer"], team=team, user=users["viewer"], models=MODELS)
    assert key.team == team


def test_it_refuses_models_outside_the_teams_list(team, users, actors, routes):
    team = set_team_limits(actor=SYSTEM, team=team, allowed_models=["gpt-4o"], rpm_limit=None, tpm_limit=None)
    with pytest.raises(ValidationError) as error:
        mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=MODELS)
    assert "allowed_models" in error.value.message_dict
    assert not CallerKey.objects.filter(team=team).exists()


def test_it_refuses_models_no_route_answers_to(team, users, actors, routes):
    with pytest.raises(ValidationError) as error:
        mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=["no-such-model"])
    assert "allowed_models" in error.value.message_dict


def test_it_refuses_no_models(team, users, actors, routes):
    with pytest.raises(ValidationError) as error:
        mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=[])
    assert "allowed_models" in error.value.message_dict


def test_the_key_inherits_the_teams_limits(team, users, actors, routes):
    team = set_team_limits(actor=SYSTEM, team=team, allowed_models=[], rpm_limit=30, tpm_limit=5000)
    key, _ = mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=MODELS)
    assert (key.rpm_limit, key.tpm_limit) == (30, 5000)


def test_nobody_mints_a_playground_key_for_someone_else(team, users, actors, routes):
    with pytest.raises(ValidationError) as error:
        mint_playground_key(actor=actors["admin"], team=team, user=users["developer"], models=MODELS)
    assert "user" in error.value.message_dict


def test_it_caps_the_playground_keys_alive_at_once(team, users, actors, routes):
    for _ in range(MAX_ACTIVE_PLAYGROUND_KEYS):
        mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=MODELS)
    with pytest.raises(ValidationError) as error:
        mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=MODELS)
    assert "wait for one to expire" in error.value.message_dict["team"][0]


def test_expired_playground_keys_do_not_count_against_the_cap(team, users, actors, routes):
    for _ in range(MAX_ACTIVE_PLAYGROUND_KEYS):
        mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=MODELS)
    CallerKey.objects.filter(tags__contains=[PLAYGROUND_TAG]).update(expires_at=timezone.now() - timedelta(seconds=1))
    key, _ = mint_playground_key(actor=actors["developer"], team=team, user=users["developer"], models=MODELS)
    assert key.status == "active"

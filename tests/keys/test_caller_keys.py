from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import AuditEvent
from keys.models import CallerKey
from keys.services import digest, issue_key, revoke_key, revoke_keys, rotate_key, update_key
from orgs.models import Team
from tests.factories import make_routes


@pytest.fixture
def routes(org, actors, fresh_key_ring):
    return make_routes(org, actors["admin"])


@pytest.fixture
def limited_team(team, routes):
    Team.objects.filter(pk=team.pk).update(allowed_models=["gpt-4o", "claude-sonnet"], rpm_limit=100, tpm_limit=50_000)
    team.refresh_from_db()
    return team


def test_issue_stores_only_digest_and_prefix(team, actors, users):
    key, plaintext = issue_key(actor=actors["developer"], team=team, name="laptop", user=users["developer"])
    assert plaintext.startswith("gh_")
    assert key.prefix == plaintext[:11]
    assert key.digest == digest(plaintext)
    stored = CallerKey.objects.filter(pk=key.pk).values()[0]
    assert plaintext not in str(stored)
    event = AuditEvent.objects.get(org=team.org, action="key.issued")
    assert plaintext not in str(event.diff)


def test_key_inherits_team_limits_and_cannot_exceed_them(limited_team, actors):
    key, _ = issue_key(actor=actors["admin"], team=limited_team, name="k")
    assert (key.rpm_limit, key.tpm_limit) == (100, 50_000)
    with pytest.raises(ValidationError) as error:
        issue_key(actor=actors["admin"], team=limited_team, name="k2", rpm_limit=101, allowed_models=["o1"])
    assert set(error.value.message_dict) == {"rpm_limit", "allowed_models"}


@pytest.mark.parametrize("limit", [0, -5, 10**30])
def test_absurd_limits_are_refused(team, actors, limit):
    with pytest.raises(ValidationError) as error:
        issue_key(actor=actors["admin"], team=team, name="k", tpm_limit=limit)
    assert "tpm_limit" in error.value.message_dict


def test_expiry_in_the_past_is_refused(team, actors):
    with pytest.raises(ValidationError) as error:
        issue_key(actor=actors["admin"], team=team, name="k", expires_at=timezone.now() - timedelta(minutes=1))
    assert "expires_at" in error.value.message_dict


def test_rotation_keeps_settings_and_gives_a_grace_window(limited_team, actors):
    old, _ = issue_key(actor=actors["admin"], team=limited_team, name="svc", tags=["prod"], allowed_models=["gpt-4o"])
    new, plaintext = rotate_key(actor=actors["admin"], key=old, grace_hours=2)
    assert plaintext.startswith("gh_") and new.digest != old.digest
    old.refresh_from_db()
    assert new.rotated_from_id == old.pk
    assert (new.name, new.tags, new.allowed_models, new.rpm_limit) == ("svc", ["prod"], ["gpt-4o"], 100)
    assert old.status == "active"
    assert timedelta(hours=1, minutes=59) < old.expires_at - timezone.now() <= timedelta(hours=2)
    with pytest.raises(ValidationError):
        rotate_key(actor=actors["admin"], key=old)
    assert AuditEvent.objects.filter(org=limited_team.org, action="key.rotated", target_id=str(new.pk)).exists()


def test_rotation_with_zero_grace_expires_the_old_key_now(team, actors):
    old, _ = issue_key(actor=actors["admin"], team=team, name="svc")
    rotate_key(actor=actors["admin"], key=old, grace_hours=0)
    old.refresh_from_db()
    assert old.status == "expired"
    assert CallerKey.objects.active().filter(pk=old.pk).count() == 0


def test_revoke_is_immediate_and_audited(team, actors):
    key, _ = issue_key(actor=actors["admin"], team=team, name="svc")
    revoke_key(actor=actors["admin"], key=key)
    key.refresh_from_db()
    assert key.status == "revoked"
    with pytest.raises(ValidationError):
        revoke_key(actor=actors["admin"], key=key)
    with pytest.raises(ValidationError):
        update_key(
            actor=actors["admin"],
            key=key,
            name="x",
            allowed_models=[],
            rpm_limit=None,
            tpm_limit=None,
            tags=[],
            expires_at=None,
        )


def test_bulk_revoke_by_user_and_by_team(team, actors, users, org):
    mine = [issue_key(actor=actors["admin"], team=team, name=f"d{i}", user=users["developer"])[0] for i in range(3)]
    other, _ = issue_key(actor=actors["admin"], team=team, name="viewer's", user=users["viewer"])
    assert revoke_keys(actor=actors["admin"], org=org, user=users["developer"]) == 3
    assert all(CallerKey.objects.get(pk=k.pk).status == "revoked" for k in mine)
    assert CallerKey.objects.get(pk=other.pk).status == "active"
    assert revoke_keys(actor=actors["admin"], org=org, team=team) == 1
    event = AuditEvent.objects.filter(org=org, action="key.bulk_revoked").order_by("-sequence").first()
    assert event.diff["revoked"]["after"] == 1


def test_unknown_model_aliases_are_refused(team, actors, routes):
    with pytest.raises(ValidationError) as error:
        issue_key(actor=actors["admin"], team=team, name="k", allowed_models=["gpt-4o", "no-such-model"])
    assert "no-such-model" in error.value.message_dict["allowed_models"][0]

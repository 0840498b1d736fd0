import json

import pytest
from django.conf import settings

from fleet import services
from fleet.models import ConfigRevision, ConfigSnapshot, PendingConfigChange
from fleet.redis_client import redis_keys
from gateway.config import (
    ConfigError,
    config_from_delta,
    config_from_full,
    decode_raw_key,
    envelope_payload,
    open_envelope,
    public_key_text,
    signing_key_from_text,
    verify_key_from_text,
)
from keys.models import CallerKey
from keys.services import issue_key, revoke_key
from tests.factories import make_routes


@pytest.fixture
def public_key():
    return verify_key_from_text(public_key_text(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY)))


@pytest.fixture
def gateway_key():
    return decode_raw_key(settings.GATEHOUSE_GATEWAY_KEY, "GATEHOUSE_GATEWAY_KEY")


@pytest.fixture
def routed_team(org, team, actors, fresh_key_ring):
    make_routes(org, actors["admin"])
    return team


def load_from_redis(client, public_key, gateway_key):
    keys = redis_keys()
    document, payload = open_envelope(public_key, client.get(keys.snapshot))
    config = config_from_full(document, payload, gateway_key)
    for envelope, _score in client.zrangebyscore(keys.change_log, config.revision + 1, "+inf", withscores=True):
        document, payload = open_envelope(public_key, envelope)
        config = config_from_delta(config, document, payload, gateway_key)
    return config


def test_first_publish_is_a_full_snapshot_then_deltas(routed_team, actors, clean_redis, public_key, gateway_key):
    first = services.publish_pending()
    assert first.kind == "full"
    assert not PendingConfigChange.objects.exists()
    key, plaintext = issue_key(actor=actors["admin"], team=routed_team, name="svc")
    second = services.publish_pending()
    assert second.kind == "delta"
    assert second.number > first.number
    assert int(clean_redis.get(redis_keys().latest)) == second.number
    config = load_from_redis(clean_redis, public_key, gateway_key)
    assert config.revision == second.number
    assert config.keys[key.digest].team_id == str(routed_team.pk)
    assert config.route(str(routed_team.org_id), "gpt-4o") is not None
    assert config.api_keys  # provider secrets opened with the gateway key, in memory only
    assert "sk-simulator-test-0000" not in clean_redis.get(redis_keys().snapshot).decode()
    assert plaintext not in clean_redis.get(redis_keys().snapshot).decode()


def test_a_burst_of_changes_coalesces_into_one_delta(routed_team, actors, clean_redis):
    services.publish_pending()
    for i in range(5):
        issue_key(actor=actors["admin"], team=routed_team, name=f"k{i}")
    revision = services.publish_pending()
    document = json.loads(envelope_payload(bytes(revision.envelope)))
    assert len([op for op in document["ops"] if op["type"] == "key"]) == 5
    assert services.publish_pending() is None  # nothing pending: no new revision


def test_revoked_key_leaves_the_config(routed_team, actors, clean_redis, public_key, gateway_key):
    key, _ = issue_key(actor=actors["admin"], team=routed_team, name="svc")
    services.publish_pending()
    revoke_key(actor=actors["admin"], key=key)
    services.publish_pending()
    assert key.digest not in load_from_redis(clean_redis, public_key, gateway_key).keys


def test_publishing_twice_is_harmless_and_redis_is_rebuilt_after_loss(
    routed_team, actors, clean_redis, public_key, gateway_key
):
    services.publish_pending()
    issue_key(actor=actors["admin"], team=routed_team, name="svc")
    latest = services.publish_pending()
    assert services.sync_to_redis() == latest.number  # again: nothing changes
    assert clean_redis.zcard(redis_keys().change_log) == 1
    for name in clean_redis.scan_iter(f"{redis_keys().prefix}:*"):
        clean_redis.delete(name)  # Redis lost everything
    assert services.sync_to_redis() == latest.number
    config = load_from_redis(clean_redis, public_key, gateway_key)
    assert config.revision == latest.number
    assert len(config.keys) == CallerKey.objects.active().count()


def content(config):
    """What a config says, whatever path built it."""
    return (
        dict(config.keys),
        config.teams,
        config.orgs,
        config.credentials,
        config.deployments,
        config.routes,
        config.budgets,
        config.policies,
    )


def test_compaction_snapshots_the_newest_revision_without_a_new_number(
    routed_team, actors, clean_redis, public_key, gateway_key
):
    services.publish_pending()
    for i in range(3):
        issue_key(actor=actors["admin"], team=routed_team, name=f"k{i}")
        services.publish_pending()
    newest = ConfigRevision.objects.order_by("-number").first()
    replayed = load_from_redis(clean_redis, public_key, gateway_key)
    snapshot = services.compact()
    assert snapshot.number == newest.number
    assert ConfigRevision.objects.order_by("-number").first().number == newest.number  # no new revision
    assert int(clean_redis.get(redis_keys().latest)) == newest.number
    assert int(clean_redis.get(redis_keys().snapshot_revision)) == newest.number
    assert services.compact() is None  # nothing changed since
    compacted = load_from_redis(clean_redis, public_key, gateway_key)
    assert compacted.revision == replayed.revision == newest.number
    assert content(compacted) == content(replayed)
    # Every worker at this revision reports the revision's hash, however it got there.
    assert compacted.hash == replayed.hash == newest.sha256


def test_compaction_bounds_the_replay_and_rebuilds_redis_after_a_loss(
    routed_team, actors, clean_redis, public_key, gateway_key
):
    services.publish_pending()
    issue_key(actor=actors["admin"], team=routed_team, name="before")
    services.publish_pending()
    compacted = services.compact()
    later_key, _ = issue_key(actor=actors["admin"], team=routed_team, name="after")
    later = services.publish_pending()
    entities = services.revision_entities(later.number)
    assert later_key.digest in entities["key"]
    assert set(entities["key"]) == {key.digest for key in CallerKey.objects.active()}
    for name in clean_redis.scan_iter(f"{redis_keys().prefix}:*"):
        clean_redis.delete(name)  # Redis lost everything
    assert services.sync_to_redis() == later.number
    assert int(clean_redis.get(redis_keys().snapshot_revision)) == compacted.number
    config = load_from_redis(clean_redis, public_key, gateway_key)
    assert config.revision == later.number
    assert later_key.digest in config.keys


def test_a_sync_never_moves_redis_backwards(routed_team, actors, clean_redis):
    services.publish_pending()
    issue_key(actor=actors["admin"], team=routed_team, name="k")
    newest = services.publish_pending()
    services.compact()
    keys = redis_keys()
    # As if a sync that read newer state had finished first.
    clean_redis.set(keys.latest, newest.number + 5)
    clean_redis.set(keys.snapshot_revision, newest.number + 5)
    clean_redis.set(keys.snapshot, b"newer")
    issue_key(actor=actors["admin"], team=routed_team, name="k2")
    services.publish_pending()
    assert int(clean_redis.get(keys.latest)) == newest.number + 5
    assert clean_redis.get(keys.snapshot) == b"newer"


def test_a_tampered_envelope_is_refused(routed_team, clean_redis, public_key):
    services.publish_pending()
    envelope = clean_redis.get(redis_keys().snapshot).replace(b'"slug":"acme"', b'"slug":"evil"')
    with pytest.raises(ConfigError, match="signature"):
        open_envelope(public_key, envelope)


def test_a_delta_on_the_wrong_base_is_refused(routed_team, actors, clean_redis, public_key, gateway_key):
    services.publish_pending()
    config = load_from_redis(clean_redis, public_key, gateway_key)
    issue_key(actor=actors["admin"], team=routed_team, name="a")
    services.publish_pending()
    issue_key(actor=actors["admin"], team=routed_team, name="b")
    newest = services.publish_pending()
    document, payload = open_envelope(public_key, bytes(newest.envelope))
    with pytest.raises(ConfigError, match="applies to"):
        config_from_delta(config, document, payload, gateway_key)


def test_revisions_are_numbered_by_a_sequence(routed_team, actors, clean_redis):
    numbers = []
    services.publish_pending()
    for i in range(3):
        issue_key(actor=actors["admin"], team=routed_team, name=f"k{i}")
        numbers.append(services.publish_pending().number)
    assert numbers == sorted(numbers)
    assert ConfigRevision.objects.count() == 4


def test_rollback_restores_content_but_never_a_revoked_key(routed_team, actors, clean_redis, public_key, gateway_key):
    from fleet.services import diff_revisions, roll_back_to
    from orgs.services import set_team_limits

    services.publish_pending()
    key, _ = issue_key(actor=actors["admin"], team=routed_team, name="svc")
    good = services.publish_pending()
    set_team_limits(actor=actors["admin"], team=routed_team, allowed_models=["o1"], rpm_limit=5, tpm_limit=None)
    revoke_key(actor=actors["admin"], key=key)
    bad = services.publish_pending()
    changed = {(row["type"], row["id"]) for row in diff_revisions(good.number, bad.number)}
    assert changed == {("team", str(routed_team.pk)), ("key", key.digest)}
    rollback = roll_back_to(actor=actors["owner"], number=good.number)
    config = load_from_redis(clean_redis, public_key, gateway_key)
    assert config.revision == rollback.number
    assert config.teams[str(routed_team.pk)].allowed_models == ()  # the team as it was
    assert key.digest not in config.keys  # revocation is never rolled back
    # Compaction keeps the rollback in force (it replays, it does not recompile).
    issue_key(actor=actors["admin"], team=routed_team, name="later")
    services.publish_pending()
    services.compact()
    assert load_from_redis(clean_redis, public_key, gateway_key).teams[str(routed_team.pk)].allowed_models == ()
    # Republishing from the database makes PostgreSQL win again.
    services.republish_all(actor=actors["owner"], reason="test")
    assert load_from_redis(clean_redis, public_key, gateway_key).teams[str(routed_team.pk)].allowed_models == ("o1",)


def test_compaction_keeps_only_the_newest_snapshots(routed_team, actors, clean_redis, monkeypatch):
    monkeypatch.setattr(services, "SNAPSHOTS_KEPT", 2)
    services.publish_pending()
    numbers = []
    for i in range(4):
        issue_key(actor=actors["admin"], team=routed_team, name=f"s{i}")
        services.publish_pending()
        numbers.append(services.compact().number)
    assert sorted(ConfigSnapshot.objects.values_list("number", flat=True)) == numbers[-2:]
    # Older revisions still rebuild from full revisions and deltas.
    assert services.revision_entities(numbers[0])["key"]

"""Applying config at scale: deltas share the key index, the state file is appended to and
survives a torn write, compaction reloads nothing, and snapshots are built off the loop."""

import asyncio
import hashlib
import os
import threading
import time

import pytest
from django.conf import settings

from fleet import services
from fleet.models import ConfigRevision
from gateway import follower as follower_module
from gateway.config import (
    ConfigError,
    canonical_bytes,
    config_from_delta,
    config_from_full,
    content_hash,
    decode_raw_key,
    seal_for_gateway,
    sign_envelope,
    signing_key_from_text,
)
from gateway.layered_map import MIN_OVERLAY, LayeredMap
from gateway.redis_keys import RedisKeys
from keys.services import issue_key
from tests.factories import make_routes

KEYS = RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)
ORG, TEAM, CREDENTIAL, DEPLOYMENT, ROUTE = "org-1", "team-1", "cred-1", "dep-1", "route-1"


def gateway_key() -> bytes:
    return decode_raw_key(settings.GATEHOUSE_GATEWAY_KEY, "GATEHOUSE_GATEWAY_KEY")


def digest(number: int) -> str:
    return hashlib.sha256(f"key-{number}".encode()).hexdigest()


def key_value(number: int) -> dict:
    return {
        "key_id": f"key-id-{number}",
        "org_id": ORG,
        "team_id": TEAM,
        "prefix": "gh_test",
        "allowed_models": [],
        "rpm_limit": None,
        "tpm_limit": None,
        "expires_at": None,
    }


def snapshot_document(revision: int, key_count: int) -> dict:
    """A full snapshot with one org, team, credential, deployment and route, and `key_count` keys."""
    sealed = seal_for_gateway(gateway_key(), "sk-test-0000", credential_id=CREDENTIAL)
    return {
        "schema": 1,
        "revision": revision,
        "kind": "full",
        "signed_at": int(time.time()),  # fresh: a worker with nothing on disk starts from it
        "entities": {
            "org": {ORG: {"slug": "acme"}},
            "team": {TEAM: {"org_id": ORG, "allowed_models": [], "rpm_limit": None, "tpm_limit": None}},
            "credential": {
                CREDENTIAL: {
                    "org_id": ORG,
                    "provider": "openai",
                    "base_url": "",
                    "azure_endpoint": "",
                    "azure_api_version": "",
                    "team_ids": [],
                    "sealed_api_key": sealed,
                }
            },
            "deployment": {
                DEPLOYMENT: {
                    "org_id": ORG,
                    "credential_id": CREDENTIAL,
                    "upstream_model": "gpt-4o",
                    "max_output_tokens": 4096,
                    "prices": [],
                }
            },
            "route": {ROUTE: {"org_id": ORG, "alias": "gpt-4o", "deployment_ids": [DEPLOYMENT]}},
            "key": {digest(number): key_value(number) for number in range(key_count)},
        },
    }


def delta_document(revision: int, ops: list[dict]) -> dict:
    return {"schema": 1, "revision": revision, "kind": "delta", "base_revision": revision - 1, "ops": ops}


def build_full(document: dict):
    payload = canonical_bytes(document)
    return config_from_full(document, payload, gateway_key())


def apply_delta(config, document: dict):
    return config_from_delta(config, document, canonical_bytes(document), gateway_key())


# Deltas share what they do not touch ------------------------------------------------------


def test_a_one_key_delta_at_100k_keys_copies_neither_the_key_index_nor_other_maps():
    before = build_full(snapshot_document(1, 100_000))
    delta = delta_document(
        2,
        [
            {"type": "key", "id": digest(100_000), "value": key_value(100_000)},
            {"type": "key", "id": digest(5), "value": None},
        ],
    )
    after = apply_delta(before, delta)
    assert after.keys.shares_base_with(before.keys)
    assert after.keys.overlay_size == 2
    for name in ("orgs", "teams", "credentials", "deployments", "routes", "routes_by_alias", "api_keys"):
        assert getattr(after, name) is getattr(before, name), name
    assert len(after.keys) == len(before.keys) == 100_000
    assert after.keys.get(digest(100_000)).key_id == "key-id-100000"
    assert digest(5) not in after.keys and after.keys.get(digest(5)) is None
    # The config still serving is untouched.
    assert digest(5) in before.keys and digest(100_000) not in before.keys
    assert after.revision == 2 and after.hash == content_hash(canonical_bytes(delta))


def test_the_overlay_merges_into_a_new_base_and_every_version_keeps_its_content():
    reference = {f"k{i}": i for i in range(1_000)}
    current: LayeredMap[int] = LayeredMap(dict(reference))
    versions = [(current, dict(reference))]
    merged = False
    for step in range(600):
        changes: dict[str, int | None] = {f"k{step}": None, f"new{step}": step, f"k{999 - step % 7}": -step}
        for key, value in changes.items():
            if value is None:
                reference.pop(key, None)
            else:
                reference[key] = value
        following = current.with_changes(changes)
        merged |= not following.shares_base_with(current)
        current = following
        versions.append((current, dict(reference)))
    assert merged  # the overlay did not grow without bound
    assert current.overlay_size <= MIN_OVERLAY
    for version, expected in versions[::50]:
        assert dict(version) == expected
        assert len(version) == len(expected)
        assert set(version) == set(expected)
        assert all(version[key] == value for key, value in expected.items())
    assert "k0" not in current and current.get("k0", "gone") == "gone"
    with pytest.raises(KeyError):
        current["k0"]


def test_a_delta_that_breaks_a_reference_is_refused():
    config = build_full(snapshot_document(1, 10))
    with pytest.raises(ConfigError, match="unknown deployments"):
        apply_delta(config, delta_document(2, [{"type": "deployment", "id": DEPLOYMENT, "value": None}]))


def test_a_delta_re_derives_the_lookups_it_touches():
    config = build_full(snapshot_document(1, 10))
    moved = {"org_id": ORG, "alias": "gpt-4o-mini", "deployment_ids": [DEPLOYMENT]}
    after = apply_delta(config, delta_document(2, [{"type": "route", "id": ROUTE, "value": moved}]))
    assert after.route(ORG, "gpt-4o") is None
    assert after.route(ORG, "gpt-4o-mini").id == ROUTE
    assert config.route(ORG, "gpt-4o").id == ROUTE


# The follower against the real Redis and control plane ---------------------------------


@pytest.fixture
def routed_team(org, team, actors, fresh_key_ring):
    make_routes(org, actors["admin"])
    return team


def newest() -> ConfigRevision:
    return ConfigRevision.objects.order_by("-number").first()


def test_compaction_makes_no_worker_reload_and_a_new_worker_starts_from_it(
    routed_team, actors, clean_redis, make_follower, loop
):
    services.publish_pending()
    running = make_follower("running")
    loop.run_until_complete(running.catch_up())
    issue_key(actor=actors["admin"], team=routed_team, name="a")
    services.publish_pending()
    loop.run_until_complete(running.catch_up())
    compacted = services.compact()
    assert compacted.number == running.config.revision
    loop.run_until_complete(running.catch_up())
    issue_key(actor=actors["admin"], team=routed_team, name="b")
    services.publish_pending()
    loop.run_until_complete(running.catch_up())
    starting = make_follower("starting")
    loop.run_until_complete(starting.catch_up())
    assert running.config.revision == starting.config.revision == newest().number
    assert running.snapshot_loads == 1  # the first load only: compaction brought nothing new
    assert starting.snapshot_loads == 1
    assert dict(starting.config.keys) == dict(running.config.keys)
    assert starting.config.hash == running.config.hash == newest().sha256


def test_deltas_are_appended_to_the_state_file_not_rewritten(routed_team, actors, clean_redis, make_follower, loop):
    services.publish_pending()
    follower = make_follower()
    loop.run_until_complete(follower.catch_up())
    loop.run_until_complete(follower.state.flush())
    first = os.stat(follower.state.path)
    snapshot = follower.state.path.read_bytes()
    for name in ("a", "b", "c"):
        issue_key(actor=actors["admin"], team=routed_team, name=name)
        services.publish_pending()
        loop.run_until_complete(follower.catch_up())
    loop.run_until_complete(follower.state.flush())
    assert os.stat(follower.state.path).st_ino == first.st_ino  # the same file, not a renamed rewrite
    content = follower.state.path.read_bytes()
    assert content.startswith(snapshot) and content.count(b"\0") == 3


def test_a_torn_last_record_is_ignored_and_cut_before_the_next_append(
    routed_team, actors, clean_redis, make_follower, loop
):
    services.publish_pending()
    key_a, _ = issue_key(actor=actors["admin"], team=routed_team, name="a")
    first_delta = services.publish_pending()
    follower = make_follower()
    loop.run_until_complete(follower.catch_up())
    key_b, _ = issue_key(actor=actors["admin"], team=routed_team, name="b")
    services.publish_pending()
    loop.run_until_complete(follower.catch_up())
    loop.run_until_complete(follower.state.flush())
    path = follower.state.path
    os.truncate(path, path.stat().st_size - 5)  # a crash in the middle of the last append

    from_disk = make_follower()
    assert loop.run_until_complete(from_disk.load_from_disk())
    assert from_disk.config.revision == first_delta.number
    assert key_a.digest in from_disk.config.keys and key_b.digest not in from_disk.config.keys
    loop.run_until_complete(from_disk.catch_up())  # Redis is back: the lost delta is appended again
    loop.run_until_complete(from_disk.state.flush())

    again = make_follower()
    assert loop.run_until_complete(again.load_from_disk())
    assert again.config.revision == newest().number
    assert key_b.digest in again.config.keys


def test_a_snapshot_is_built_off_the_event_loop(clean_redis, make_follower, monkeypatch, loop):
    document = snapshot_document(7, 30_000)
    envelope = sign_envelope(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY), canonical_bytes(document))
    clean_redis.set(KEYS.snapshot, envelope)
    clean_redis.set(KEYS.latest, 7)
    ticks = 0
    seen = {}
    real_build = follower_module.config_from_full

    def watched_build(*arguments):
        seen["thread"], seen["ticks_before"] = threading.get_ident(), ticks
        config = real_build(*arguments)
        seen["ticks_after"] = ticks
        return config

    monkeypatch.setattr(follower_module, "config_from_full", watched_build)
    follower = make_follower()

    async def load_while_ticking():
        nonlocal ticks
        loading = asyncio.create_task(follower.catch_up())
        while not loading.done():
            ticks += 1
            await asyncio.sleep(0)
        await loading

    loop.run_until_complete(load_while_ticking())
    assert follower.config.revision == 7 and len(follower.config.keys) == 30_000
    assert seen["thread"] != threading.get_ident()
    assert seen["ticks_after"] > seen["ticks_before"]  # the loop ran while the snapshot was indexed


def test_a_serving_worker_loads_no_snapshot_for_a_compaction(served, gateway_workers, actors, clean_redis):
    (worker,) = gateway_workers(1)
    issue_key(actor=actors["admin"], team=served["team"], name="before")
    services.publish_pending()
    services.compact()
    issue_key(actor=actors["admin"], team=served["team"], name="after")
    later = services.publish_pending()
    heartbeat = KEYS.node(worker.node_id)
    worker.wait(lambda: clean_redis.hget(heartbeat, "revision") == str(later.number).encode(), timeout=10)
    assert clean_redis.hget(heartbeat, "snapshot_loads") == b"1"
    assert clean_redis.hget(heartbeat, "config_hash").decode() == later.sha256


@pytest.mark.parametrize("piece", [1 << 20, 1000])  # the snapshot read in one piece, or in many
def test_the_state_file_restarts_from_a_compaction_snapshot_the_worker_went_through(
    routed_team, actors, clean_redis, make_follower, loop, monkeypatch, piece
):
    monkeypatch.setattr(follower_module, "REBASE_AFTER_DELTAS", 3)
    monkeypatch.setattr(follower_module, "REBASE_PIECE_BYTES", piece)
    services.publish_pending()
    follower = make_follower()
    loop.run_until_complete(follower.catch_up())
    for name in ("a", "b"):
        issue_key(actor=actors["admin"], team=routed_team, name=name)
        services.publish_pending()
        loop.run_until_complete(follower.catch_up())
    compacted = services.compact()
    issue_key(actor=actors["admin"], team=routed_team, name="c")
    last = services.publish_pending()
    loop.run_until_complete(follower.catch_up())  # the third delta on disk: time to rebase
    loop.run_until_complete(follower.state.flush())
    records = follower.state.path.read_bytes().split(b"\0")
    assert records == [bytes(compacted.envelope), bytes(last.envelope)]
    assert follower.snapshot_loads == 1  # copied from Redis, not loaded

    restarted = make_follower()
    assert loop.run_until_complete(restarted.load_from_disk())
    assert restarted.config.revision == last.number
    assert dict(restarted.config.keys) == dict(follower.config.keys)


def test_a_worker_whose_next_delta_is_missing_waits_instead_of_reloading_the_same_snapshot(
    routed_team, actors, clean_redis, make_follower, loop
):
    services.publish_pending()
    follower = make_follower("behind")
    loop.run_until_complete(follower.catch_up())
    issue_key(actor=actors["admin"], team=routed_team, name="lost")
    services.publish_pending()
    keys = RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)
    clean_redis.delete(keys.change_log)  # the delta it needs is gone (trimmed, or Redis lost it)
    for _ in range(3):  # polls
        loop.run_until_complete(follower.catch_up())
    assert follower.snapshot_loads == 1  # the snapshot it already runs past was not rebuilt
    assert "neither in the change log nor in a snapshot" in follower.last_error
    services.compact()  # a snapshot of the newest revision arrives: now it loads
    loop.run_until_complete(follower.catch_up())
    assert follower.config.revision == newest().number
    assert follower.snapshot_loads == 2

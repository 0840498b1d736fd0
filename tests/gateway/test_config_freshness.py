"""An old, validly signed config put back in Redis (issue 12, finding 5): a worker never moves
below the revision it has on disk, and a worker with nothing on disk refuses to start from a
config signed longer ago than GATEWAY_MAX_SNAPSHOT_AGE_SECONDS, says so, and starts once a
fresh one arrives. Compaction keeps the newest snapshot fresh without making anyone reload."""

import json
import re
import time

import httpx
import pytest
from django.conf import settings
from django.urls import reverse

from fleet import services
from fleet.models import ConfigRevision
from gateway import follower as follower_module
from gateway.config import (
    canonical_bytes,
    content_hash,
    envelope_payload,
    sign_envelope,
    signing_key_from_text,
)
from gateway.redis_keys import RedisKeys
from keys.services import issue_key, revoke_key
from tests.factories import make_routes
from tests.plugins.gateway_workers import GatewayWorker

KEYS = RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)
TWO_HOURS = 7200
MAX_AGE = "3600"  # GATEWAY_MAX_SNAPSHOT_AGE_SECONDS for the workers of these tests


def signed(envelope: bytes, **changes) -> bytes:
    """`envelope`'s document with `changes`, signed with the control plane's key: what it
    signed at another time (signed_at=...)."""
    document = {**json.loads(envelope_payload(bytes(envelope))), **changes}
    return sign_envelope(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY), canonical_bytes(document))


def put_back(client, envelope: bytes, *, number: int, latest: int | None = None) -> None:
    """What someone with write access to Redis does: an older snapshot as the newest, and the
    change log after it gone."""
    client.set(KEYS.snapshot, envelope)
    client.set(KEYS.snapshot_revision, number)
    client.set(KEYS.latest, number if latest is None else latest)
    client.delete(KEYS.change_log)
    client.publish(KEYS.revisions_channel, str(number))


def models_status(worker, key: str) -> int:
    return httpx.get(f"{worker.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code


def heartbeat(client, worker) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(KEYS.node(worker.node_id)).items()}


def newest() -> ConfigRevision:
    return ConfigRevision.objects.order_by("-number").first()


# Real worker processes --------------------------------------------------------------------


def test_a_new_worker_refuses_an_old_snapshot_put_back_in_redis(served, actors, clean_redis, tmp_path, staff_client):
    first = newest()  # the full snapshot in which the key works
    revoke_key(actor=actors["admin"], key=served["key"])
    services.publish_pending()
    put_back(clean_redis, signed(first.envelope, signed_at=int(time.time()) - TWO_HOURS), number=first.number)

    worker = GatewayWorker("fresh-node", tmp_path / "empty-state")
    try:
        worker.start(wait_ready=False, GATEWAY_MAX_SNAPSHOT_AGE_SECONDS=MAX_AGE)
        # The first heartbeat is sent after the worker's first look at Redis.
        worker.wait(lambda: heartbeat(clean_redis, worker).get("heartbeat_at"), timeout=10)
        assert models_status(worker, served["plaintext"]) == 503  # not 200 with the revoked key
        ready = worker.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert f"revision {first.number}: not serving it" in reason
        assert "GATEWAY_MAX_SNAPSHOT_AGE_SECONDS (3600 s)" in reason
        beat = heartbeat(clean_redis, worker)
        assert beat["revision"] == ""
        assert beat["last_error"] == beat["last_rejected"] == reason
        page = staff_client.get(reverse("fleet:node_list")).content.decode()
        cells = node_cells(page, "fresh-node")
        assert cells[3].startswith("Not serving") and cells[5] == reason

        # The control plane's next compaction puts the newest revision back: the worker,
        # still polling, starts serving it.
        services.compact()
        worker.wait(lambda: worker.revision() == newest().number, timeout=10)
        assert models_status(worker, served["plaintext"]) == 401
    finally:
        worker.stop()


def test_a_worker_never_moves_below_the_revision_on_its_disk(served, actors, clean_redis, tmp_path):
    first = newest()
    revoke_key(actor=actors["admin"], key=served["key"])
    revoked = services.publish_pending()
    worker = GatewayWorker("disk-floor-node", tmp_path / "state")
    worker.start(GATEWAY_MAX_SNAPSHOT_AGE_SECONDS=MAX_AGE)
    assert worker.revision() == revoked.number
    worker.stop()
    # The older snapshot as it was signed (fresh), `latest` pointing at it, the log trimmed.
    put_back(clean_redis, bytes(first.envelope), number=first.number)
    try:
        worker.start(GATEWAY_MAX_SNAPSHOT_AGE_SECONDS=MAX_AGE)
        assert worker.revision() == revoked.number  # from disk, not Redis' older one
        assert models_status(worker, served["plaintext"]) == 401
        # Announced as newer than the worker's own: it is looked at, and refused.
        put_back(clean_redis, bytes(first.envelope), number=revoked.number + 5)
        worker.wait(lambda: "older than the running revision" in heartbeat(clean_redis, worker)["last_rejected"])
        assert worker.revision() == revoked.number
        assert models_status(worker, served["plaintext"]) == 401
    finally:
        worker.stop()


def test_a_refreshed_snapshot_lets_a_new_worker_start_and_running_ones_load_nothing(
    served, clean_redis, gateway_workers, tmp_path
):
    full = newest()
    # As if the only revision had been published two hours ago (a quiet fleet).
    envelope = signed(full.envelope, signed_at=int(time.time()) - TWO_HOURS)
    payload = envelope_payload(envelope)
    ConfigRevision.objects.filter(number=full.number).update(envelope=envelope, sha256=content_hash(payload))
    services.sync_to_redis()
    assert clean_redis.get(KEYS.snapshot) == envelope
    (running,) = gateway_workers(1)  # the default maximum age, a day, lets it start

    starting = GatewayWorker("starting-node", tmp_path / "empty-state")
    try:
        starting.start(wait_ready=False, GATEWAY_MAX_SNAPSHOT_AGE_SECONDS=MAX_AGE)
        starting.wait(lambda: "not serving it" in starting.get("/readyz").json().get("reason", ""), timeout=10)
        services.compact()  # re-signs the stale snapshot under the same number
        assert clean_redis.get(KEYS.snapshot) != envelope
        starting.wait(lambda: starting.revision() == full.number, timeout=10)
        assert models_status(starting, served["plaintext"]) == 200
        time.sleep(1.5)  # three of the running worker's polls
        beat = heartbeat(clean_redis, running)
        assert (beat["revision"], beat["snapshot_loads"]) == (str(full.number), "1")  # nothing reloaded
        assert heartbeat(clean_redis, starting)["config_hash"] == beat["config_hash"]
    finally:
        starting.stop()


# One follower in this process -------------------------------------------------------------


@pytest.fixture
def routed_team(org, team, actors, fresh_key_ring):
    make_routes(org, actors["admin"])
    return team


@pytest.fixture
def max_snapshot_age(monkeypatch):
    """The in-process followers of a test (tests/plugins/followers.py) refuse configs signed
    more than MAX_AGE seconds ago. Worker processes get it in their own environment."""
    monkeypatch.setenv("GATEWAY_MAX_SNAPSHOT_AGE_SECONDS", MAX_AGE)


def test_an_old_snapshot_with_fresh_deltas_after_it_is_current_enough(
    routed_team, actors, clean_redis, make_follower, max_snapshot_age, loop
):
    """A delta signed now proves its revision was the newest now, whatever the snapshot's age."""
    first = services.publish_pending()
    key, _ = issue_key(actor=actors["admin"], team=routed_team, name="a")
    delta = services.publish_pending()
    clean_redis.set(KEYS.snapshot, signed(first.envelope, signed_at=int(time.time()) - TWO_HOURS))
    follower = make_follower()
    loop.run_until_complete(follower.catch_up())
    assert follower.config.revision == delta.number
    assert key.digest in follower.config.keys
    assert follower.last_error == ""


def test_a_refused_snapshot_is_not_built_again_on_every_poll(
    clean_redis, routed_team, make_follower, max_snapshot_age, loop, monkeypatch
):
    first = services.publish_pending()
    put_back(clean_redis, signed(first.envelope, signed_at=int(time.time()) - TWO_HOURS), number=first.number)
    built = []
    real_build = follower_module.config_from_full
    monkeypatch.setattr(follower_module, "config_from_full", lambda *a: built.append(1) or real_build(*a))
    follower = make_follower()
    for _ in range(3):  # polls
        loop.run_until_complete(follower.catch_up())
    assert follower.config is None
    assert built == []
    assert "not serving it: signed at" in follower.last_error


def test_a_snapshot_without_a_signing_time_is_refused_to_start_from_but_a_disk_copy_serves(
    routed_team, actors, clean_redis, make_follower, max_snapshot_age, loop
):
    """An upgrade: documents signed by the previous version carry no signed_at. A worker with
    a disk copy keeps serving and follows; one with nothing on disk waits for compaction."""
    first = services.publish_pending()
    document = json.loads(envelope_payload(bytes(first.envelope)))
    del document["signed_at"]
    unstamped = sign_envelope(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY), canonical_bytes(document))
    put_back(clean_redis, unstamped, number=first.number)

    with_disk = make_follower("with-disk")
    with_disk.state.replace([unstamped])
    loop.run_until_complete(with_disk.state.flush())
    assert loop.run_until_complete(with_disk.load_from_disk())
    loop.run_until_complete(with_disk.catch_up())
    assert with_disk.config.revision == first.number

    with_nothing = make_follower("with-nothing")  # a state folder of its own, empty
    loop.run_until_complete(with_nothing.catch_up())
    assert with_nothing.config is None
    assert "carries no signing time" in with_nothing.last_error

    services.compact()  # re-signs it
    loop.run_until_complete(with_nothing.catch_up())
    assert with_nothing.config.revision == first.number


# The fleet page names the real reason --------------------------------------------------------


def node_cells(page: str, node_id: str) -> list[str]:
    """The <td> cells of a node's row on the fleet page, tags stripped."""
    row = next(chunk for chunk in page.split("<tr>") if node_id in chunk)
    return [" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_the_fleet_page_names_a_delta_whose_signature_does_not_verify(
    routed_team, actors, clean_redis, make_follower, max_snapshot_age, loop, staff_client
):
    services.publish_pending()
    follower = make_follower("tampered-log-node")
    loop.run_until_complete(follower.catch_up())
    running = follower.config.revision
    issue_key(actor=actors["admin"], team=routed_team, name="a")
    following = services.publish_pending()
    tampered = bytes(following.envelope).replace(b'"prefix":"', b'"prefix":"x', 1)
    assert tampered != bytes(following.envelope)
    clean_redis.zremrangebyscore(KEYS.change_log, following.number, following.number)
    clean_redis.zadd(KEYS.change_log, {tampered: following.number})
    loop.run_until_complete(follower.catch_up())
    loop.run_until_complete(follower.send_heartbeat())

    page = staff_client.get(reverse("fleet:node_list")).content.decode()
    last_error, last_rejected = node_cells(page, "tampered-log-node")[5:7]
    assert last_rejected == f"delta {following.number}: The signature does not verify."
    assert last_error == (
        f"delta {following.number}: The signature does not verify. "
        f"(staying at revision {running} until a snapshot past it)"
    )
    assert follower.config.revision == running

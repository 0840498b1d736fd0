"""Faults a gateway worker must survive: no control plane, Redis down at start, bad revisions."""

import json

import httpx
import openai
import pytest
from django.conf import settings

from fleet import services
from fleet.models import ConfigRevision
from gateway.config import canonical_bytes, envelope_payload, sign_envelope
from gateway.redis_keys import RedisKeys
from keys.services import revoke_key
from tests.plugins.disposable_redis import DisposableRedis
from tests.plugins.gateway_workers import GatewayWorker

KEYS = RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)


def chat(worker, key):
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=key, max_retries=0, timeout=10)
    return client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_workers_serve_without_the_control_plane_or_celery(served, gateway_workers):
    # Nothing of the control plane runs in this test: no web server, no Celery worker.
    (worker,) = gateway_workers(1)
    assert chat(worker, served["plaintext"]).choices


def test_a_worker_starts_from_disk_while_redis_is_down_and_catches_up(served, tmp_path, actors):
    redis_server = DisposableRedis(tmp_path).start()
    redis_server.load(list(ConfigRevision.objects.order_by("number")))
    state = tmp_path / "state"
    first = GatewayWorker("disk-node", state).start(REDIS_URL=redis_server.url)
    assert chat(first, served["plaintext"]).choices
    first.stop()
    redis_server.stop()

    second = GatewayWorker("disk-node", state)
    try:
        second.start(REDIS_URL=redis_server.url)  # ready from its disk copy, Redis down
        assert chat(second, served["plaintext"]).choices
        assert second.get("/readyz").json()["revision"] == newest_revision()
        redis_server.start()
        revoke_key(actor=actors["admin"], key=served["key"])
        services.publish_pending()
        redis_server.load(list(ConfigRevision.objects.order_by("number")))
        second.wait(lambda: models_status(second, served["plaintext"]) == 401, timeout=10)
    finally:
        second.stop()
        redis_server.stop()


def newest_revision() -> int:
    return ConfigRevision.objects.order_by("-number").first().number


def models_status(worker, key) -> int:
    return httpx.get(f"{worker.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


@pytest.mark.parametrize("fault", ["signature", "older", "schema"])
def test_bad_revisions_are_rejected_reported_and_the_last_good_one_serves(served, gateway_workers, clean_redis, fault):
    (worker,) = gateway_workers(1)
    good = worker.revision()
    latest = ConfigRevision.objects.order_by("-number").first()
    document = json.loads(envelope_payload(bytes(latest.envelope)))
    from fleet.services import _signing_key

    if fault == "signature":
        clean_redis.set(KEYS.snapshot, bytes(latest.envelope).replace(b'"acme"', b'"evil"'))
    elif fault == "older":
        document["revision"] = good - 1
        clean_redis.set(KEYS.snapshot, sign_envelope(_signing_key(), canonical_bytes(document)))
    else:
        document["revision"] = good + 1
        document["entities"]["key"] = {"not-a-digest": {"team_id": 5}}
        clean_redis.set(KEYS.snapshot, sign_envelope(_signing_key(), canonical_bytes(document)))
    # Announced as a new snapshot, as the publisher would (a worker skips a snapshot whose
    # announced revision it already runs past).
    clean_redis.set(KEYS.snapshot_revision, good + 1)
    clean_redis.set(KEYS.latest, good + 1)
    clean_redis.publish(KEYS.revisions_channel, str(good + 1))

    heartbeat = KEYS.node(worker.node_id)
    worker.wait(lambda: clean_redis.hget(heartbeat, "last_rejected"), timeout=5)
    reason = clean_redis.hget(heartbeat, "last_rejected").decode()
    assert {"signature": "signature", "older": "older", "schema": "key"}[fault] in reason
    assert worker.revision() == good
    assert chat(worker, served["plaintext"]).choices


def test_a_worker_restarted_while_redis_holds_an_unverifiable_snapshot_serves_its_disk_copy(served, tmp_path):
    """Issue 11, observation 6: it used to answer 503 not_ready, its valid disk copy unused."""
    redis_server = DisposableRedis(tmp_path).start()
    revisions = list(ConfigRevision.objects.order_by("number"))
    redis_server.load(revisions)
    state = tmp_path / "state"
    worker = GatewayWorker("tampered-node", state).start(REDIS_URL=redis_server.url)
    good = worker.revision()
    worker.stop()
    client = redis_server.client()
    newest = bytes(revisions[-1].envelope)
    client.set(KEYS.snapshot, newest.replace(b'"acme"', b'"evil"'))  # the signature no longer holds
    client.set(KEYS.snapshot_revision, good + 1)
    client.set(KEYS.latest, good + 1)
    client.delete(KEYS.change_log)
    try:
        worker.start(REDIS_URL=redis_server.url)  # ready, from disk
        assert worker.revision() == good
        assert chat(worker, served["plaintext"]).choices
        heartbeat = KEYS.node("tampered-node")
        worker.wait(lambda: client.hget(heartbeat, "last_rejected"), timeout=5)
        assert "signature" in client.hget(heartbeat, "last_rejected").decode()
    finally:
        worker.stop()
        redis_server.stop()

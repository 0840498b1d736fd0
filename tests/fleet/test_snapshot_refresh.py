"""Every signed config document carries its signing time, and compaction keeps the newest
snapshot fresh in a quiet fleet (a worker with nothing on disk refuses a stale one)."""

import io
import json
import time

import pytest
from django.conf import settings
from django.core.management import call_command

from fleet import services
from fleet.models import ConfigRevision, ConfigSnapshot
from fleet.redis_client import redis_keys
from gateway.config import canonical_bytes, content_hash, envelope_payload, sign_envelope, signing_key_from_text
from keys.services import issue_key
from tests.factories import make_routes

TWO_HOURS = 7200


@pytest.fixture
def routed_team(org, team, actors, fresh_key_ring):
    make_routes(org, actors["admin"])
    return team


def document(envelope) -> dict:
    return json.loads(envelope_payload(bytes(envelope)))


def backdate(row, seconds: int) -> None:
    """Sign `row`'s document again as the control plane would have `seconds` ago."""
    signed = {**document(row.envelope), "signed_at": int(time.time()) - seconds}
    payload = canonical_bytes(signed)
    envelope = sign_envelope(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY), payload)
    type(row).objects.filter(number=row.number).update(
        envelope=envelope, sha256=content_hash(payload), size=len(payload)
    )


def test_every_signed_document_carries_its_signing_time(routed_team, actors, clean_redis):
    before = int(time.time())
    full = services.publish_pending()
    issue_key(actor=actors["admin"], team=routed_team, name="a")
    delta = services.publish_pending()
    snapshot = services.compact()
    after = int(time.time())
    for envelope in (full.envelope, delta.envelope, snapshot.envelope):
        assert before <= document(envelope)["signed_at"] <= after


def test_compaction_re_signs_a_stale_full_revision_without_a_new_revision(routed_team, clean_redis):
    full = services.publish_pending()
    backdate(full, TWO_HOURS)
    full.refresh_from_db()
    services.sync_to_redis()  # Redis holds the two-hour-old envelope
    keys = redis_keys()
    assert clean_redis.get(keys.snapshot) == bytes(full.envelope)

    refreshed = services.compact()

    assert refreshed is not None and refreshed.number == full.number
    assert ConfigRevision.objects.count() == 1  # no new revision
    signed = document(refreshed.envelope)
    assert signed["signed_at"] >= int(time.time()) - 5
    assert signed["revision_sha256"] == full.sha256  # workers report the revision's own hash
    assert signed["entities"] == document(full.envelope)["entities"]
    assert clean_redis.get(keys.snapshot) == bytes(refreshed.envelope)  # copied under the same number
    assert int(clean_redis.get(keys.snapshot_revision)) == int(clean_redis.get(keys.latest)) == full.number
    assert services.compact() is None  # fresh now: nothing to do


def test_compaction_re_signs_a_stale_compaction_snapshot_in_place(routed_team, actors, clean_redis):
    services.publish_pending()
    issue_key(actor=actors["admin"], team=routed_team, name="a")
    newest = services.publish_pending()
    first = services.compact()
    backdate(first, TWO_HOURS)
    services.sync_to_redis()

    refreshed = services.compact()

    assert refreshed.number == newest.number
    assert list(ConfigSnapshot.objects.values_list("number", flat=True)) == [newest.number]  # the same row
    assert document(refreshed.envelope)["signed_at"] >= int(time.time()) - 5
    assert document(refreshed.envelope)["revision_sha256"] == newest.sha256
    assert clean_redis.get(redis_keys().snapshot) == bytes(refreshed.envelope)


def test_a_fresh_snapshot_is_not_re_signed(routed_team, clean_redis):
    full = services.publish_pending()
    assert services.compact() is None
    assert clean_redis.get(redis_keys().snapshot) == bytes(full.envelope)


def test_the_refresh_period_is_a_setting(routed_team, clean_redis, settings):
    full = services.publish_pending()
    backdate(full, 120)
    settings.GATEHOUSE_SNAPSHOT_REFRESH_SECONDS = 300
    assert services.compact() is None
    settings.GATEHOUSE_SNAPSHOT_REFRESH_SECONDS = 60
    assert services.compact().number == full.number


def test_a_snapshot_from_before_signing_times_were_recorded_is_re_signed(routed_team, clean_redis):
    """An upgrade: revisions signed by the previous version have no signed_at."""
    full = services.publish_pending()
    old = {key: value for key, value in document(full.envelope).items() if key != "signed_at"}
    payload = canonical_bytes(old)
    envelope = sign_envelope(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY), payload)
    ConfigRevision.objects.filter(number=full.number).update(envelope=envelope, sha256=content_hash(payload))
    refreshed = services.compact()
    assert refreshed.number == full.number
    assert "signed_at" in document(refreshed.envelope)


def test_a_sync_puts_back_a_snapshot_replaced_under_the_same_number(routed_team, actors, clean_redis):
    """Redis' copy of the newest snapshot is told apart by its signature, not its number."""
    first = services.publish_pending()
    issue_key(actor=actors["admin"], team=routed_team, name="a")
    services.publish_pending()
    snapshot = services.compact()
    keys = redis_keys()
    clean_redis.set(keys.snapshot, bytes(first.envelope))  # an older snapshot, the number left alone
    services.sync_to_redis()
    assert clean_redis.get(keys.snapshot) == bytes(snapshot.envelope)


def test_publish_config_refreshes_a_stale_snapshot_so_a_new_worker_can_start_at_once(routed_team, clean_redis):
    """`manage.py publish_config` (run on deploy, and by `make run`) does what compaction does:
    after an upgrade or a long quiet spell, diskless workers need not wait for the next one."""
    full = services.publish_pending()
    backdate(full, TWO_HOURS)
    services.sync_to_redis()
    before = int(time.time())
    call_command("publish_config", stdout=io.StringIO())
    in_redis = clean_redis.get(redis_keys().snapshot)
    assert document(in_redis)["signed_at"] >= before
    assert ConfigRevision.objects.count() == 1  # re-signed under the same number, no new revision

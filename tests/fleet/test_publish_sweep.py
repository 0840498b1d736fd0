"""A config change committed while the Celery broker (Redis) cannot be reached still reaches the
gateways (issue 11, observation 1): the request that made it does not fail, and the periodic
sweep publishes it once Redis is back."""

import logging
import time

from django.conf import settings

from controlplane.celery import app
from fleet.changes import _enqueue_publish
from fleet.models import ConfigRevision, PendingConfigChange
from fleet.redis_client import redis_keys
from fleet.tasks import publish_config
from keys.services import revoke_key
from tests.plugins.gateway_workers import free_port


def test_a_revocation_the_broker_never_heard_of_is_published_by_the_sweep(served, actors, clean_redis, caplog):
    before = ConfigRevision.objects.order_by("-number").first().number
    revoke_key(actor=actors["admin"], key=served["key"])  # committed; its publish is not asked for yet
    assert PendingConfigChange.objects.exists()

    # The broker is down when the change commits: asking for a publish fails, quietly.
    started = time.monotonic()
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, logger="fleet.changes"), app.connection_for_write(dead_broker) as unreachable:
        _enqueue_publish(connection=unreachable)  # does not raise
    assert "the periodic sweep will publish it" in caplog.text
    assert time.monotonic() - started < 15
    assert PendingConfigChange.objects.exists()  # nothing was published

    # Redis is back: the sweep (a beat entry, fleet.publish_config) publishes what is pending.
    sweep = settings.CELERY_BEAT_SCHEDULE["publish-pending"]
    assert sweep["task"] == publish_config.name and sweep["schedule"] <= 10
    publish_config.apply()  # what the beat-scheduled run does, here without a worker
    assert not PendingConfigChange.objects.exists()
    newest = ConfigRevision.objects.order_by("-number").first().number
    assert newest == before + 1
    assert int(clean_redis.get(redis_keys().latest)) == newest

"""The config publisher (a real Celery worker on the publish queue) and Celery beat ride out
Redis restarts by themselves (issue 11, observation 1): after each outage, changes committed
while Redis was away and changes made after it came back reach Redis without restarting any
process. Redis here is a server of the test's own, stopped and started again empty, as a
restart without persistence leaves it."""

import sys
import time

import pytest
from django.conf import settings
from django.db import transaction
from django.test import TestCase

from fleet.changes import record_config_change
from fleet.models import ConfigRevision, PendingConfigChange
from fleet.redis_client import redis_keys
from tests.plugins.disposable_redis import DisposableRedis
from tests.plugins.gateway_workers import ROOT
from tests.plugins.waiting import wait_for

sys.path.insert(0, str(ROOT / "scripts"))
from run import celery_beat, celery_worker

pytestmark = pytest.mark.django_db(transaction=True)
OUTAGE_SECONDS = 6
RECOVERY_SECONDS = 30


def change_without_asking_for_a_publish(org) -> None:
    """A committed config change whose on-commit publish request is dropped, as when the broker
    is down at commit time: only the periodic sweep (beat) can publish it."""
    with TestCase.captureOnCommitCallbacks(execute=False), transaction.atomic():
        record_config_change("org", org.pk)


def test_publisher_and_beat_survive_redis_restarts_and_publish_afterwards(served, org, tmp_path, control_plane_process):
    server = DisposableRedis(tmp_path).start()
    sweep = {"GATEHOUSE_PUBLISH_SWEEP_SECONDS": "1"}
    queue = settings.GATEHOUSE_PUBLISH_QUEUE
    publisher, publisher_log = control_plane_process("publisher", celery_worker(queue, 1, "publisher"), server.url)
    beat, beat_log = control_plane_process("beat", celery_beat(), server.url, **sweep)
    redis = server.client()

    def logs() -> str:
        return f"publisher:\n{publisher_log.read_text()[-3000:]}\nbeat:\n{beat_log.read_text()[-3000:]}"

    def published() -> bool:
        newest = ConfigRevision.objects.order_by("-number").values_list("number", flat=True).first()
        try:
            in_redis = int(redis.get(redis_keys().latest) or 0)
        except Exception:
            return False
        return not PendingConfigChange.objects.exists() and in_redis == newest

    try:
        change_without_asking_for_a_publish(org)
        assert wait_for(published, RECOVERY_SECONDS), logs()
        for _outage in range(2):
            server.stop()
            change_without_asking_for_a_publish(org)  # committed while Redis is away
            time.sleep(OUTAGE_SECONDS)
            assert publisher.poll() is None and beat.poll() is None, logs()
            server.start()  # back, and empty
            assert wait_for(published, RECOVERY_SECONDS), logs()
            change_without_asking_for_a_publish(org)  # made after Redis came back
            assert wait_for(published, RECOVERY_SECONDS), logs()
        assert publisher.poll() is None and beat.poll() is None, logs()
    finally:
        server.stop()

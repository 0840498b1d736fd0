"""Config publishing has a queue of its own (issue 11, observation 5): a backlog of other tasks
(exports, webhooks, alert checks) cannot delay a revocation. A real publisher process (make run's
command) serves the publish queue while the general queue holds hundreds of waiting tasks."""

import sys
import time

import pytest
from django.conf import settings

from budgets.tasks import check_alerts
from controlplane.celery import app as celery_app
from fleet.models import ConfigRevision
from fleet.redis_client import redis_keys
from fleet.tasks import compact_config, publish_config
from keys.services import revoke_key
from tests.plugins.gateway_workers import ROOT
from tests.plugins.waiting import wait_for

sys.path.insert(0, str(ROOT / "scripts"))
from run import celery_worker

pytestmark = pytest.mark.django_db(transaction=True)
BACKLOG = 300


def queue_of(task) -> str:
    return celery_app.amqp.router.route({}, task.name)["queue"].name


def test_publish_tasks_go_to_the_publish_queue_and_nothing_else_does():
    assert queue_of(publish_config) == queue_of(compact_config) == settings.GATEHOUSE_PUBLISH_QUEUE
    assert queue_of(check_alerts) == settings.CELERY_TASK_DEFAULT_QUEUE != settings.GATEHOUSE_PUBLISH_QUEUE


def test_a_revocation_is_published_past_a_backlog_of_other_tasks(served, actors, clean_redis, control_plane_process):
    queues = (settings.CELERY_TASK_DEFAULT_QUEUE, settings.GATEHOUSE_PUBLISH_QUEUE)
    with celery_app.connection_for_write() as broker:
        for queue in queues:
            broker.default_channel.queue_purge(queue)
    try:
        for _ in range(BACKLOG):  # nobody serves the general queue here: it only grows
            check_alerts.delay(str(served["team"].org_id))
        publisher, log = control_plane_process("publisher", celery_worker(settings.GATEHOUSE_PUBLISH_QUEUE, 1, "p"))
        assert wait_for(lambda: "ready" in log.read_text(), 30), log.read_text()[-2000:]

        started = time.monotonic()
        revoke_key(actor=actors["admin"], key=served["key"])  # asks for a publish on commit
        newest = ConfigRevision.objects.order_by("-number").values_list("number", flat=True).first

        def published() -> bool:
            return int(clean_redis.get(redis_keys().latest) or 0) == newest() and newest() is not None

        assert wait_for(published, 10), log.read_text()[-2000:]
        assert time.monotonic() - started < 5
        assert publisher.poll() is None
        with celery_app.connection_for_write() as broker:  # the backlog is still all there
            assert broker.default_channel.client.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == BACKLOG
    finally:
        with celery_app.connection_for_write() as broker:
            for queue in queues:
                broker.default_channel.queue_purge(queue)

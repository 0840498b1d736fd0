"""An in-process Celery worker for tests whose tasks must really go through the broker."""

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from controlplane.celery import app as celery_app


@pytest.fixture
def celery_worker_on_test_queue():
    """A worker consuming the suite's queue on the real broker (REDIS_URL), leftovers of earlier
    runs purged first (they would only slow it down)."""
    assert settings.CELERY_TASK_DEFAULT_QUEUE == "gatehouse-test"
    assert celery_app.conf.broker_url == settings.REDIS_URL
    with celery_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(settings.CELERY_TASK_DEFAULT_QUEUE)
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as worker:
        assert settings.CELERY_TASK_DEFAULT_QUEUE in {queue.name for queue in worker.app.amqp.queues.values()}
        yield worker

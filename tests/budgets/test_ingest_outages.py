"""`manage.py ingest_usage` rides out Redis and PostgreSQL outages by itself (issue 11,
observation 1): a real process against a Redis server of the test's own, stopped and started
again, and its database connections cut."""

import time

import pytest
from django.db import connection

from budgets.models import UsageRecord
from fleet.redis_client import redis_keys
from tests.budgets.test_ingestion import event_fields
from tests.plugins.disposable_redis import DisposableRedis
from tests.plugins.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_ingestion_waits_out_a_redis_restart_and_cut_database_connections(served, org, tmp_path, ingestion_process):
    server = DisposableRedis(tmp_path).start()
    process, log = ingestion_process("outage", redis_url=server.url)
    stream = redis_keys().usage_stream

    def send(count: int) -> None:
        client = server.client()
        for _ in range(count):
            client.xadd(stream, event_fields(org, served["team"], served["key"]))

    def stored(count: int) -> bool:
        return UsageRecord.objects.filter(org=org).count() >= count

    try:
        send(5)
        assert wait_for(lambda: stored(5), 20), log.read_text()[-2000:]
        server.stop()  # Redis goes away for a while
        time.sleep(3)
        assert process.poll() is None, log.read_text()[-2000:]
        server.start()  # back, empty (no persistence): the consumer group is made again
        send(5)
        assert wait_for(lambda: stored(10), 20), log.read_text()[-2000:]
        with connection.cursor() as cursor:  # PostgreSQL drops the ingestion's connections
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        send(5)
        assert wait_for(lambda: stored(15), 20), log.read_text()[-2000:]
        assert process.poll() is None, log.read_text()[-2000:]
        assert "waits" in log.read_text()  # the outages were noticed and waited out, not ignored
    finally:
        server.stop()

"""The outage drill (issue 11): PostgreSQL and Redis are each stopped and started again under
traffic, and everything recovers without restarting any Gatehouse process.

Real processes on servers of the test's own: a gateway worker serving a steady stream of
requests, `manage.py ingest_usage`, the config publisher (a Celery worker on the publish queue)
and Celery beat, on a PostgreSQL that starts as a copy of the test database and a Redis that
keeps its data across a restart (append-only file, as production runs it). Afterwards every
request the gateway answered is in the ledger exactly once, config changes made after each
outage reach Redis, and every process is still the one that was started."""

import sys
import threading
import time

import httpx
import psycopg
import pytest
import redis
from django.conf import settings

from fleet.models import ConfigRevision
from fleet.redis_client import redis_keys
from tests.plugins.disposable_postgres import DisposablePostgres
from tests.plugins.disposable_redis import DisposableRedis
from tests.plugins.gateway_workers import ROOT, GatewayWorker
from tests.plugins.waiting import wait_for

sys.path.insert(0, str(ROOT / "scripts"))
from run import celery_beat, celery_worker

pytestmark = pytest.mark.django_db(transaction=True)
OUTAGE_SECONDS = 8
RECOVERY_SECONDS = 45
TRANSIENT = (psycopg.Error, redis.RedisError, OSError)  # a server still starting
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class Traffic:
    """Requests to the gateway, one after another, until stopped; every answer's server id."""

    def __init__(self, url: str, key: str):
        self.url, self.headers = url, {"Authorization": f"Bearer {key}"}
        self.answered: list[tuple[int, str]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                try:
                    answer = client.post(f"{self.url}/v1/chat/completions", json=BODY, headers=self.headers)
                except httpx.HTTPError:
                    continue
                self.answered.append((answer.status_code, answer.headers["x-request-id"]))
                time.sleep(0.05)

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=20)


def test_postgres_and_redis_restarts_under_traffic_heal_without_restarting_anything(
    served, org, tmp_path, control_plane_process
):
    postgres = DisposablePostgres()
    redis_server = DisposableRedis(tmp_path, persistent=True).start()
    processes = {}
    gateway = None
    try:
        postgres.copy_of_test_database()
        redis_server.load(list(ConfigRevision.objects.order_by("number")))
        env = {"DATABASE_URL": postgres.url(), "GATEHOUSE_PUBLISH_SWEEP_SECONDS": "1"}
        commands = {
            "ingest": ["manage.py", "ingest_usage", "--consumer", "drill"],
            "publisher": celery_worker(settings.GATEHOUSE_PUBLISH_QUEUE, 1, "publisher"),
            "beat": celery_beat(),
        }
        for name, argv in commands.items():
            processes[name] = control_plane_process(name, argv, redis_server.url, **env)
        gateway = GatewayWorker("drill-node", tmp_path / "state").start(REDIS_URL=redis_server.url)
        database, redis_store = postgres.connect, redis_server.client()

        def logs() -> str:
            return "\n".join(f"{name}:\n{log.read_text()[-2500:]}" for name, (_process, log) in processes.items())

        def all_running() -> bool:
            return all(process.poll() is None for process, _log in processes.values()) and (
                gateway.process.poll() is None
            )

        def publish_a_change_and_wait() -> None:
            with database() as db:
                db.execute(
                    "INSERT INTO fleet_pendingconfigchange (entity_type, entity_id, created_at) VALUES (%s, %s, now())",
                    ("org", str(org.pk)),
                )

            def published() -> bool:
                with database() as db:
                    pending = db.execute("SELECT count(*) FROM fleet_pendingconfigchange").fetchone()[0]
                    newest = db.execute("SELECT max(number) FROM fleet_configrevision").fetchone()[0]
                return pending == 0 and int(redis_store.get(redis_keys().latest) or 0) == newest

            assert wait_for(published, RECOVERY_SECONDS, tolerate=TRANSIENT), logs()

        with Traffic(gateway.url, served["plaintext"]) as traffic:
            publish_a_change_and_wait()
            for server in (postgres, redis_server):
                time.sleep(2)
                server.stop()
                time.sleep(OUTAGE_SECONDS)
                assert all_running(), logs()
                server.start()
                publish_a_change_and_wait()  # made after the server came back: it reaches the gateways
            time.sleep(2)
        assert all_running(), logs()

        answered = {request_id for _status, request_id in traffic.answered}
        assert len(answered) == len(traffic.answered) > 50
        assert {status for status, _ in traffic.answered} == {200}  # the gateway served throughout

        def ledger_ids() -> set[str]:
            with database() as db:
                return {row[0] for row in db.execute("SELECT request_id FROM budgets_usagerecord")}

        assert wait_for(lambda: answered <= ledger_ids(), RECOVERY_SECONDS, tolerate=TRANSIENT), (
            f"{len(answered - ledger_ids())} of {len(answered)} requests never reached the ledger\n{logs()}"
        )
        with database() as db:  # exactly once: one row per request, no duplicates by another id
            assert db.execute("SELECT count(*) FROM budgets_usagerecord").fetchone()[0] == len(answered)
        assert all_running(), logs()
    finally:
        if gateway is not None:
            gateway.stop()
        redis_server.stop()
        postgres.remove()

"""Usage survives a Redis outage and a worker that dies during it (issue 11, observation 3):
the worker keeps serving, spools the events to its state folder, and sends them when it runs
again with Redis back."""

import time

import httpx
from django.conf import settings

from fleet.models import ConfigRevision
from gateway.redis_keys import RedisKeys
from gateway.usage_spool import UsageSpool
from tests.plugins.disposable_redis import DisposableRedis
from tests.plugins.gateway_workers import GatewayWorker

KEYS = RedisKeys(settings.GATEHOUSE_REDIS_PREFIX)
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_the_spool_reads_back_what_was_appended_and_skips_a_record_cut_by_a_crash(tmp_path):
    spool = UsageSpool(tmp_path / "state" / "usage.spool")
    assert spool.read() == []
    spool.append([b"first", b""])
    spool.append([b"\x00binary\xff" * 100])
    with spool.path.open("ab") as cut:
        cut.write(b"\x00\x00\x01\x00partial")  # a record of 256 bytes, 7 of them written
    assert spool.read() == [b"first", b"", b"\x00binary\xff" * 100]
    spool.clear()
    assert not spool.path.exists() and spool.read() == []


def stream_request_ids(client) -> set[str]:
    return {fields[b"request_id"].decode() for _id, fields in client.xrange(KEYS.usage_stream)}


def test_events_of_a_worker_killed_during_a_redis_outage_reach_the_stream_after_its_restart(served, tmp_path):
    redis_server = DisposableRedis(tmp_path).start()
    redis_server.load(list(ConfigRevision.objects.order_by("number")))
    state = tmp_path / "state"
    worker = GatewayWorker("spool-node", state).start(REDIS_URL=redis_server.url)
    headers = {"Authorization": f"Bearer {served['plaintext']}"}
    try:
        redis_server.stop()  # the outage begins
        answers = [httpx.post(f"{worker.url}/v1/chat/completions", json=BODY, headers=headers) for _ in range(12)]
        assert [answer.status_code for answer in answers] == [200] * 12  # served all the same
        served_ids = {answer.headers["x-request-id"] for answer in answers}
        spool = UsageSpool(state / "spool-node" / "usage.spool")
        worker.wait(lambda: worker.get("/readyz").json().get("usage_buffered") == 12)
        worker.wait(lambda: len(spool.read()) == 12)  # on disk before the worker dies
        worker.process.kill()  # no chance to flush anything
        worker.process.wait()

        redis_server.start()  # Redis returns, empty: it kept nothing
        redis_server.load(list(ConfigRevision.objects.order_by("number")))
        worker.start(REDIS_URL=redis_server.url)
        client = redis_server.client()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and stream_request_ids(client) != served_ids:
            time.sleep(0.1)
        assert stream_request_ids(client) == served_ids
        worker.wait(lambda: not spool.path.exists())  # sent: the spool is gone
        assert "usage_buffered" not in worker.get("/readyz").json()
    finally:
        worker.stop()
        redis_server.stop()


def test_the_log_gives_back_events_in_every_state_and_gathers_them_in_the_spool(tmp_path):
    spool = UsageSpool(tmp_path / "state" / "usage.spool")
    spool.log(b"in flight")
    spool.cut()  # a send started, and the worker died before it ended
    spool.log(b"logged")
    spool.append([b"spooled"])
    assert sorted(UsageSpool(spool.path).recover()) == [b"in flight", b"logged", b"spooled"]
    assert not spool.log_path.exists() and not spool.sending_path.exists()  # all in the spool now


def test_events_answered_just_before_a_kill_reach_the_stream_after_the_restart(served, tmp_path):
    """Redis holds every write for a moment (CLIENT PAUSE WRITE), so the worker's flush is
    still waiting when it is killed: the events were answered, and are in no Redis yet."""
    redis_server = DisposableRedis(tmp_path).start()
    redis_server.load(list(ConfigRevision.objects.order_by("number")))
    worker = GatewayWorker("log-node", tmp_path / "state").start(REDIS_URL=redis_server.url)
    headers = {"Authorization": f"Bearer {served['plaintext']}"}
    client = redis_server.client()
    try:
        client.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        answers = [httpx.post(f"{worker.url}/v1/chat/completions", json=BODY, headers=headers) for _ in range(5)]
        assert [answer.status_code for answer in answers] == [200] * 5  # no limit: admission needs no Redis
        worker.process.kill()  # while its flush waits for Redis
        worker.process.wait()
        client.execute_command("CLIENT", "UNPAUSE")
        assert stream_request_ids(client) == set()  # nothing reached Redis before the kill

        worker.start(REDIS_URL=redis_server.url)
        served_ids = {answer.headers["x-request-id"] for answer in answers}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not served_ids <= stream_request_ids(client):
            time.sleep(0.1)
        assert served_ids <= stream_request_ids(client)
    finally:
        worker.stop()
        redis_server.stop()


def test_a_log_the_disk_refuses_is_reported_once_and_does_not_fail_the_request(tmp_path, caplog):
    state = tmp_path / "state"
    state.mkdir()
    (state / "usage.log").mkdir()  # opening the log as a file fails
    spool = UsageSpool(state / "usage.spool")
    spool.log(b"first")
    spool.log(b"second")
    assert [r.message for r in caplog.records].count(
        f"usage events cannot be logged to {spool.log_path}, kept in memory only: "
        f"[Errno 21] Is a directory: '{spool.log_path}'"
    ) == 1

"""The in-flight stream journal (gateway/stream_journal.py) on real files: what a crashed
worker left behind is read back as a billable usage event with the tokens last recorded."""

import os
from datetime import UTC, datetime
from decimal import Decimal

import httpx

from budgets.services import create_budget
from fleet import services
from fleet.redis_client import redis_keys
from gateway.budgets import Admission, period_bounds
from gateway.stream_journal import INTERRUPTED_CODE, INTERRUPTED_STATUS, StreamJournal
from gateway.usage import UsageEvent
from tests.plugins.gateway_workers import GatewayWorker

PRICE = {"input_micros_per_mtok": 2_500_000, "output_micros_per_mtok": 10_000_000}  # $2.50 / $10 per million


def event(request_id: str = "0f3c2a9e-1b7d-4e5f-9a8b-7c6d5e4f3a2b") -> UsageEvent:
    return UsageEvent(
        request_id, "org-1", "team-1", "key-1", "gpt-4o", deployment_id="dep-1", stream=True, node_id="n1", ts=1.5,
        client_request_id="caller-7",
    )  # fmt: skip


def test_a_stream_that_never_finished_is_read_back_with_the_tokens_last_counted(tmp_path):
    journal = StreamJournal(tmp_path / "streams")
    admission = Admission("5000|res-1|b1:2026-11", 5000, ["holds:org-1", "budget:b1:2026-11"])
    entry = journal.open(event(), input_estimate=40, admission=admission, **PRICE)
    entry.progress(0, 3, 12.5)
    entry.progress(0, 17, 12.5)
    # The process dies here: no close(). What a new process finds:
    ((path, found),) = StreamJournal(tmp_path / "streams").interrupted()
    assert found.event.request_id == event().request_id
    assert found.event.client_request_id == "caller-7"
    assert (found.event.input_tokens, found.event.output_tokens) == (40, 17)  # input estimated: never reported
    assert found.event.cost_micros == -(-(40 * 2_500_000 + 17 * 10_000_000) // 1_000_000)  # 270 µ$, rounded up
    assert found.event.ttft_ms == 12.5
    assert (found.event.status, found.event.error_code) == (INTERRUPTED_STATUS, INTERRUPTED_CODE)
    assert found.admission == admission
    assert path.exists()  # removed by the recovering worker only once the event is safe


def test_reported_input_tokens_win_over_the_estimate(tmp_path):
    journal = StreamJournal(tmp_path)
    entry = journal.open(event(), input_estimate=40, admission=None, **PRICE)
    entry.progress(31, 5, 0.0)
    ((_, found),) = journal.interrupted()
    assert (found.event.input_tokens, found.event.output_tokens, found.admission) == (31, 5, None)


def test_a_settled_stream_leaves_nothing_behind(tmp_path):
    journal = StreamJournal(tmp_path)
    entry = journal.open(event(), input_estimate=1, admission=None, **PRICE)
    entry.progress(0, 2, 1.0)
    entry.close()
    entry.close()  # twice is harmless
    assert journal.interrupted() == []
    assert os.listdir(tmp_path) == []


def test_an_unreadable_file_is_set_aside_not_retried(tmp_path):
    journal = StreamJournal(tmp_path)
    journal.open(event("good-1"), input_estimate=1, admission=None, **PRICE)
    (tmp_path / "torn").write_bytes(b"\x00" * 10)  # a file cut short
    found = journal.interrupted()
    assert [interrupted.event.request_id for _, interrupted in found] == ["good-1"]
    assert (tmp_path / "torn.bad").exists()
    assert len(journal.interrupted()) == 1  # the bad one is not read again


def test_a_hostile_request_id_cannot_leave_the_folder(tmp_path):
    journal = StreamJournal(tmp_path / "streams")
    entry = journal.open(event("../../etc/passwd"), input_estimate=1, admission=None, **PRICE)
    assert entry.path.parent == tmp_path / "streams"
    entry.close()


def test_a_stream_cut_by_a_killed_worker_is_billed_and_its_hold_settled_when_the_node_restarts(
    served, actors, org, provider_simulator, clean_redis, tmp_path
):
    """Issue 11, observation 4: kill -9 during a stream, start the node again."""
    budget = create_budget(
        actor=actors["finance"], org=org, name="Org monthly", scope="org", amount=Decimal("100"), period="monthly"
    )
    services.publish_pending()
    provider_simulator.configure(models={"*": {"tokens_per_second": 20, "completion_tokens": 400}})
    worker = GatewayWorker("journal-node", tmp_path / "state").start()
    holds = redis_keys().budget_holds(str(org.pk))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Tell a long story"}], "stream": True}
    headers = {"Authorization": f"Bearer {served['plaintext']}", "X-Request-Id": "caller-cut-1"}
    try:
        with httpx.stream("POST", f"{worker.url}/v1/chat/completions", json=body, headers=headers) as answer:
            request_id = answer.headers["x-request-id"]
            received = 0
            for line in answer.iter_lines():
                received += line.startswith("data: {")
                if received == 6:
                    break
            worker.process.kill()  # mid-stream, no chance to settle anything
            worker.process.wait()
        assert clean_redis.zcard(holds) == 1  # the hold is stranded
        assert not usage_entries(clean_redis, request_id)  # and nothing was billed

        worker.start()  # the same node, on the same state folder
        worker.wait(lambda: usage_entries(clean_redis, request_id))
        ((fields),) = usage_entries(clean_redis, request_id)
        assert fields[b"status"] == b"502" and fields[b"error_code"] == b"stream_interrupted"
        assert fields[b"client_request_id"] == b"caller-cut-1"
        output_tokens = int(fields[b"output_tokens"])
        # What was sent before the kill (the first chunk carries the role, no token), not the whole answer.
        assert received - 1 <= output_tokens < 400
        cost = int(fields[b"cost_micros"])
        assert cost > 0
        worker.wait(lambda: clean_redis.zcard(holds) == 0)  # the hold settled with the actual cost
        label, _end = period_bounds("monthly", datetime.now(UTC))
        counters = clean_redis.hgetall(redis_keys().budget(str(budget.org_id), str(budget.pk), label))
        assert int(counters[b"held"]) == 0 and int(counters[b"spent"]) == cost
        assert not list((tmp_path / "state" / "journal-node" / "streams").iterdir())
    finally:
        worker.stop()


def usage_entries(client, request_id: str) -> list[dict]:
    entries = client.xrange(redis_keys().usage_stream)
    return [fields for _id, fields in entries if fields[b"request_id"] == request_id.encode()]

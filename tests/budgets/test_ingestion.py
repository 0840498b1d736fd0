import time
import uuid
from decimal import Decimal

import httpx
import openai
import pytest

from budgets.ingestion import GROUP, Refusal, StoreOutcome, ingest_batch, store_events
from budgets.models import UsageHourly, UsageRecord
from fleet.redis_client import redis_keys
from keys.models import CallerKey


def event_fields(org, team, key, request_id=None, **overrides) -> dict[bytes, bytes]:
    fields = {
        "request_id": request_id or uuid.uuid4().hex,
        "org_id": str(org.pk),
        "team_id": str(team.pk),
        "key_id": str(key.pk),
        "alias": "gpt-4o",
        "deployment_id": "",
        "input_tokens": "100",
        "output_tokens": "50",
        "cost_micros": "750",
        "latency_ms": "12.5",
        "ttft_ms": "3.0",
        "status": "200",
        "error_code": "",
        "stream": "False",
        "endpoint": "chat.completions",
        "node_id": "n1",
        "ts": str(time.time()),
    }
    fields.update(overrides)
    return {k.encode(): str(v).encode() for k, v in fields.items()}


def test_redelivered_events_count_once(served, org):
    team, key = served["team"], served["key"]
    entries = [(b"1-0", event_fields(org, team, key, "req-1")), (b"2-0", event_fields(org, team, key, "req-2"))]
    assert store_events(entries) == StoreOutcome(2, [])
    assert store_events(entries) == StoreOutcome(0, [])  # delivered again after a crash
    assert UsageRecord.objects.filter(org=org).count() == 2
    hourly = UsageHourly.objects.get(org=org)
    assert (hourly.requests, hourly.input_tokens, hourly.output_tokens) == (2, 200, 100)
    assert hourly.cost == Decimal("0.001500")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_malformed_and_orphaned_events_are_refused_not_fatal(served, org):
    team, key = served["team"], served["key"]
    entries = [(b"1-0", {b"request_id": b"x"}), (b"2-0", event_fields(org, team, key, org_id=str(uuid.uuid4())))]
    refused = [Refusal(b"1-0", "org_id is missing"), Refusal(b"2-0", "unknown org")]
    assert store_events(entries) == StoreOutcome(0, refused)


def test_gateway_requests_reach_the_ledger(served, gateway_workers, clean_redis):
    (worker,) = gateway_workers(1)
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=served["plaintext"], max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    list(stream)
    deadline = time.monotonic() + 5
    inserted = 0
    while inserted < 4 and time.monotonic() < deadline:
        inserted += ingest_batch("test-consumer", 100, block_ms=200).inserted
    records = UsageRecord.objects.filter(key_id=served["key"].pk)
    assert records.count() == 4
    assert all(r.output_tokens == 16 and r.cost > 0 for r in records)
    assert records.filter(stream=True).count() == 1
    assert CallerKey.objects.get(pk=served["key"].pk).last_used_at is not None
    pending = clean_redis.xpending(redis_keys().usage_stream, GROUP)
    assert pending["pending"] == 0


def test_requests_sharing_the_callers_request_id_are_each_billed(served, gateway_workers, clean_redis):
    """The ledger's key is the gateway's own id: a caller reusing its X-Request-Id (20 requests
    here) gets 20 ledger rows, each keeping the caller's id beside the gateway's."""
    (worker,) = gateway_workers(1)
    headers = {"Authorization": f"Bearer {served['plaintext']}", "X-Request-Id": "reused-by-the-caller"}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    answers = [httpx.post(f"{worker.url}/v1/chat/completions", json=body, headers=headers) for _ in range(20)]
    assert [answer.status_code for answer in answers] == [200] * 20
    assert {answer.headers["x-client-request-id"] for answer in answers} == {"reused-by-the-caller"}
    server_ids = {answer.headers["x-request-id"] for answer in answers}
    assert len(server_ids) == 20 and "reused-by-the-caller" not in server_ids
    deadline = time.monotonic() + 10
    inserted = 0
    while inserted < 20 and time.monotonic() < deadline:
        inserted += ingest_batch("test-consumer", 100, block_ms=200).inserted
    records = UsageRecord.objects.filter(key_id=served["key"].pk)
    assert set(records.values_list("request_id", flat=True)) == server_ids
    assert set(records.values_list("client_request_id", flat=True)) == {"reused-by-the-caller"}


def test_events_written_before_the_callers_id_was_recorded_are_still_stored(served, org):
    fields = event_fields(org, served["team"], served["key"], "older-gateway")  # no client_request_id field
    assert store_events([(b"1-0", fields)]) == StoreOutcome(1, [])
    assert UsageRecord.objects.get(request_id="older-gateway").client_request_id == ""


@pytest.mark.parametrize("field", ["input_tokens", "cost_micros", "ts"])
def test_non_numeric_fields_are_refused(served, org, field):
    entries = [(b"1-0", event_fields(org, served["team"], served["key"], **{field: "lots"}))]
    outcome = store_events(entries)
    assert outcome.inserted == 0
    assert [(refusal.entry_id, refusal.reason.split()[0]) for refusal in outcome.refused] == [(b"1-0", field)]


def test_pending_entries_trimmed_from_the_stream_are_acknowledged_not_kept_forever(
    served, org, clean_redis, monkeypatch
):
    from budgets import ingestion

    stream = redis_keys().usage_stream
    ingestion.ensure_group(clean_redis, stream)
    for _ in range(3):
        clean_redis.xadd(stream, event_fields(org, served["team"], served["key"]))
    clean_redis.xreadgroup(GROUP, "crashed-consumer", {stream: ">"}, count=10)  # read, never acknowledged
    clean_redis.xtrim(stream, maxlen=0)  # trimmed while pending (the stream's length cap)
    monkeypatch.setattr(ingestion, "CLAIM_IDLE_MS", 0)
    ingest_batch("next-consumer", 100)
    assert clean_redis.xpending(stream, GROUP)["pending"] == 0


def test_events_as_the_gateway_writes_them_take_the_fast_path():
    """A layout drift between gateway/usage.py and ingestion would send every event down the
    slow field-by-field parse; this pins them together."""
    from budgets.ingestion import _GATEWAY_LINE, GATEWAY_LAYOUT
    from gateway.usage import UsageEvent

    for client_id in ("", "caller-1"):
        event = UsageEvent(
            uuid.uuid4().hex,
            str(uuid.uuid4()),
            str(uuid.uuid4()),
            str(uuid.uuid4()),
            "gpt-4o",
            deployment_id=str(uuid.uuid4()),
            latency_ms=12.5,
            ttft_ms=3.25,
            ts=time.time(),
            attempts=[
                {
                    "deployment_id": str(uuid.uuid4()),
                    "provider": "openai",
                    "status": 200,
                    "error_code": "",
                    "latency_ms": 11.0,
                }
            ],
            client_request_id=client_id,
        )
        fields = event.stream_fields()
        assert list(fields) == GATEWAY_LAYOUT
        assert _GATEWAY_LINE.fullmatch(b"\t".join(list(fields.values())[:-1]))  # the content is not a column

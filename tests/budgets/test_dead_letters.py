"""Usage entries the ledger cannot store: set aside in the dead-letter stream with a reason,
acknowledged, and ingestion goes on (issue 10, observation 1). Entries are written to the real
stream in the gateway's own field format (gateway/usage.py, UsageSink.emit)."""

import io
import json
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from django.core.management import call_command
from django.db import OperationalError, connection

from budgets import ingestion
from budgets.ingestion import GROUP, ingest_batch
from budgets.models import UsageHourly, UsageRecord
from fleet.redis_client import redis_keys
from orgs.models import Organization
from tests.factories import make_routes

pytestmark = pytest.mark.django_db
POISON_CHECK = "test_refuses_poison_alias"


@pytest.fixture
def ledger(org, team, clean_redis) -> dict:
    """An org and team to spend in, a key id, and Redis emptied of this run's keys."""
    return {"org": org, "team": team, "key_id": uuid.uuid4(), "redis": clean_redis}


@pytest.fixture
def routes_deployment(org, actors, fresh_key_ring):
    return make_routes(org, actors["admin"], aliases=("gpt-4o",))["gpt-4o"].deployments.get()


def gateway_fields(ledger: dict, **overrides) -> dict:
    """The fields UsageSink.emit appends: every UsageEvent field as str(), attempts as JSON.
    A value given as bytes is written as those bytes (what a buggy or hostile writer could do)."""
    event = {
        "request_id": uuid.uuid4().hex,
        "org_id": str(ledger["org"].pk),
        "team_id": str(ledger["team"].pk),
        "key_id": str(ledger["key_id"]),
        "alias": "gpt-4o",
        "deployment_id": "",
        "input_tokens": 100,
        "output_tokens": 50,
        "cost_micros": 750,
        "latency_ms": 12.5,
        "ttft_ms": 3.0,
        "status": 200,
        "error_code": "",
        "stream": False,
        "endpoint": "chat.completions",
        "node_id": "gw-1",
        "ts": time.time(),
        "attempts": [],
    }
    event.update(overrides)
    fields = {name: value if isinstance(value, bytes | str) else str(value) for name, value in event.items()}
    if not isinstance(event["attempts"], bytes | str):
        fields["attempts"] = json.dumps(event["attempts"])
    return fields


def emit(client, fields: dict) -> bytes:
    return client.xadd(redis_keys().usage_stream, fields)


def drain(consumer: str = "test-consumer") -> list:
    results = []
    while (result := ingest_batch(consumer, 100, block_ms=None)).read:
        results.append(result)
    return results


def dead_letters(client) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return client.xrange(redis_keys().usage_stream + ":dead")


def pending(client) -> int:
    return client.xpending(redis_keys().usage_stream, GROUP)["pending"]


def stored_ids() -> set[str]:
    return set(UsageRecord.objects.values_list("request_id", flat=True))


def refuse_poison_in_the_database() -> None:
    """A rule the database enforces and parse_event does not know: stands for any row the
    database refuses for its data although the checks passed."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER TABLE budgets_usagerecord ADD CONSTRAINT {POISON_CHECK} CHECK (alias NOT LIKE 'poison%%')"
        )


def accept_poison_again() -> None:
    with connection.cursor() as cursor:
        # The test's transaction still holds the deferred foreign-key checks of the rows stored
        # so far, and ALTER TABLE refuses to run with checks pending: run them now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"ALTER TABLE budgets_usagerecord DROP CONSTRAINT {POISON_CHECK}")


# Observation 1 ------------------------------------------------------------------------------


def test_a_nul_in_the_alias_no_longer_stops_ingestion(ledger):
    client = ledger["redis"]
    before = emit(client, gateway_fields(ledger, request_id="good-1"))
    bad = emit(client, gateway_fields(ledger, request_id="bad-1", alias="gpt-4o\u0000"))
    after = emit(client, gateway_fields(ledger, request_id="good-2"))

    drain()

    assert stored_ids() == {"good-1", "good-2"}
    assert UsageHourly.objects.get(org=ledger["org"]).requests == 2
    ((_, letter),) = dead_letters(client)
    assert letter[b"alias"] == b"gpt-4o\x00"  # the original bytes, kept for a replay
    assert letter[b"request_id"] == b"bad-1"
    assert letter[b"dead_letter.reason"] == b"alias contains a NUL character"
    assert letter[b"dead_letter.entry_id"] == bad
    assert float(letter[b"dead_letter.at"]) == pytest.approx(time.time(), abs=60)
    assert pending(client) == 0
    assert before < bad < after


@pytest.fixture
def restore_signals():
    """ingest_usage installs SIGINT/SIGTERM handlers; put pytest's back afterwards."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_ingest_usage_goes_on_past_a_bad_entry_and_a_rerun_finds_nothing_left(ledger, restore_signals):
    client = ledger["redis"]
    emit(client, gateway_fields(ledger, request_id="bad-nul", alias="gpt-4o\x00"))
    for number in range(3):
        emit(client, gateway_fields(ledger, request_id=f"good-{number}"))
    out = io.StringIO()

    call_command("ingest_usage", "--once", "--consumer", "test-command", stdout=out)
    call_command("ingest_usage", "--once", "--consumer", "test-command", stdout=out)  # as after a restart

    assert out.getvalue().splitlines() == [
        "Ingested 3 usage events; 1 set aside as dead letters.",
        "Ingested 0 usage events; 0 set aside as dead letters.",
    ]
    assert stored_ids() == {"good-0", "good-1", "good-2"}
    assert len(dead_letters(client)) == 1
    assert pending(client) == 0


# What parse_event refuses, and why ----------------------------------------------------------

REFUSED = {
    "nul in request id": ({"request_id": "req\x00"}, "request_id contains a NUL character"),
    "nul in node id": ({"node_id": "gw\x00"}, "node_id contains a NUL character"),
    "nul in error code": ({"error_code": "\x00"}, "error_code contains a NUL character"),
    "lone surrogate": ({"alias": "\ud800".encode("utf-8", "surrogatepass")}, "alias is not valid UTF-8"),
    "undecodable bytes": ({"endpoint": b"chat\xff\xfe"}, "endpoint is not valid UTF-8"),
    "request id too long": ({"request_id": "r" * 65}, "request_id is longer than 64 characters"),
    "empty request id": ({"request_id": ""}, "request_id is empty"),
    "tokens too many": ({"input_tokens": 2**31}, "input_tokens is out of range"),
    "tokens not a number": ({"output_tokens": "12abc"}, "output_tokens is not an integer"),
    "negative cost": ({"cost_micros": -1}, "cost_micros is out of range"),
    "cost beyond any request": ({"cost_micros": 10**16}, "cost_micros is out of range"),
    "status beyond http": ({"status": 70000}, "status is out of range"),
    "latency nan": ({"latency_ms": "nan"}, "latency_ms is out of range"),
    "latency infinite": ({"ttft_ms": "inf"}, "ttft_ms is out of range"),
    "negative latency": ({"latency_ms": -3}, "latency_ms is out of range"),
    "timestamp nan": ({"ts": "nan"}, "ts is out of range"),
    "timestamp past year 9999": ({"ts": "1e20"}, "ts is out of range"),
    "org id not a uuid": ({"org_id": "acme"}, "org_id is not a UUID"),
    "key id not a uuid": ({"key_id": "k" * 36}, "key_id is not a UUID"),
    "deployment id not a uuid": ({"deployment_id": "x"}, "deployment_id is not a UUID"),
    "unknown org": ({"org_id": "00000000-0000-4000-8000-000000000000"}, "unknown org"),
    "attempts not json": ({"attempts": "[{"}, "attempts is not a JSON list of attempts"),
    "attempts too long": ({"attempts": "[" * 100_000 + "]" * 100_000}, "attempts is longer than"),
    "attempts nested deep": ({"attempts": "[" * 20_000 + "]" * 20_000}, "attempts is not a JSON list of attempts"),
    "attempts with nul": ({"attempts": [{"error_code": "\x00"}]}, "attempts contains a NUL character"),
    "attempts with surrogate": ({"attempts": '[{"error_code": "\\ud800"}]'}, "attempts contains a lone surrogate"),
    "attempts with nan": ({"attempts": '[{"latency_ms": NaN}]'}, "attempts is not a JSON list of attempts"),
    "attempts not a list": ({"attempts": '{"status": 200}'}, "attempts must be a list of objects"),
}


@pytest.mark.parametrize(("overrides", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_an_entry_the_ledger_cannot_hold_is_set_aside_with_its_reason(ledger, overrides, reason):
    client = ledger["redis"]
    emit(client, gateway_fields(ledger, request_id="good-before"))
    bad = emit(client, gateway_fields(ledger, **overrides))
    emit(client, gateway_fields(ledger, request_id="good-after"))

    (result,) = drain()

    assert (result.read, result.inserted, result.dead_lettered) == (3, 2, 1)
    assert stored_ids() == {"good-before", "good-after"}
    ((_, letter),) = dead_letters(client)
    assert letter[b"dead_letter.entry_id"] == bad
    assert letter[b"dead_letter.reason"].decode().startswith(reason)
    assert pending(client) == 0


def test_fields_missing_from_an_entry_are_named(ledger):
    client = ledger["redis"]
    fields = gateway_fields(ledger)
    del fields["ts"]
    emit(client, fields)
    drain()
    ((_, letter),) = dead_letters(client)
    assert letter[b"dead_letter.reason"] == b"ts is missing"


# What is stored, exactly --------------------------------------------------------------------


def test_a_gateway_event_is_stored_field_for_field(ledger, routes_deployment):
    client = ledger["redis"]
    at = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    attempts = [
        {"deployment_id": str(routes_deployment.pk), "status": 502, "error_code": "upstream_error", "latency_ms": 3.25},
        {"deployment_id": str(routes_deployment.pk), "status": 200, "error_code": "", "latency_ms": 41.5},
    ]
    emit(
        client,
        gateway_fields(
            ledger,
            request_id="req-exact",
            deployment_id=str(routes_deployment.pk),
            input_tokens=1200,
            output_tokens=345,
            cost_micros=1_234_567,
            latency_ms=45.125,
            ttft_ms=7.5,
            status=200,
            stream=True,
            ts=at.timestamp(),
            attempts=attempts,
        ),
    )
    drain()
    record = UsageRecord.objects.get(request_id="req-exact")
    assert (record.org_id, record.team_id, record.key_id) == (ledger["org"].pk, ledger["team"].pk, ledger["key_id"])
    assert (record.alias, record.deployment_id, record.endpoint, record.node_id) == (
        "gpt-4o",
        routes_deployment.pk,
        "chat.completions",
        "gw-1",
    )
    assert (record.input_tokens, record.output_tokens, record.cost) == (1200, 345, Decimal("1.234567"))
    assert (record.latency_ms, record.ttft_ms, record.status, record.stream) == (45.125, 7.5, 200, True)
    assert record.occurred_at == at
    assert record.attempts == attempts
    hourly = UsageHourly.objects.get(org=ledger["org"])
    assert hourly.hour == at.replace(minute=0, second=0, microsecond=0)
    assert (hourly.deployment_id, hourly.cost, hourly.latency_ms_sum) == (
        routes_deployment.pk,
        Decimal("1.234567"),
        45.125,
    )


def test_text_that_copy_would_misread_is_stored_as_sent(ledger):
    client = ledger["redis"]
    alias = "tab\there\\back\nnew\rline 模型 \\N"
    emit(client, gateway_fields(ledger, request_id="req-text", alias=alias, error_code="\\.", node_id="gw\t2"))
    drain()
    record = UsageRecord.objects.get(request_id="req-text")
    assert (record.alias, record.error_code, record.node_id) == (alias, "\\.", "gw\t2")
    assert not dead_letters(client)


def test_long_descriptive_text_is_cut_to_its_column_as_before(ledger):
    client = ledger["redis"]
    emit(client, gateway_fields(ledger, request_id="req-long", alias="a" * 300, node_id="é" * 200))
    drain()
    record = UsageRecord.objects.get(request_id="req-long")
    assert (record.alias, record.node_id) == ("a" * 200, "é" * 128)


def test_fields_in_any_order_are_read_alike(ledger):
    client = ledger["redis"]
    fields = gateway_fields(ledger, request_id="req-reordered", input_tokens=7, deployment_id="")
    emit(client, dict(reversed(fields.items())))
    emit(client, gateway_fields(ledger, request_id="req-in-order", input_tokens=7))
    drain()
    ordered = UsageRecord.objects.filter(request_id__in=["req-reordered", "req-in-order"])
    assert sorted(ordered.values_list("input_tokens", "cost", "alias")) == [(7, Decimal("0.000750"), "gpt-4o")] * 2


def test_an_event_twice_in_one_batch_counts_once(ledger):
    client = ledger["redis"]
    fields = gateway_fields(ledger, request_id="req-twice")
    emit(client, fields)
    emit(client, fields)
    (result,) = drain()
    assert (result.read, result.inserted, result.dead_lettered) == (2, 1, 0)
    assert UsageHourly.objects.get(org=ledger["org"]).requests == 1


def test_negative_token_counts_count_as_none_as_before(ledger):
    emit(ledger["redis"], gateway_fields(ledger, request_id="req-negative", input_tokens=-5))
    drain()
    assert UsageRecord.objects.get(request_id="req-negative").input_tokens == 0


# When the database refuses what the checks let through --------------------------------------


def test_rows_the_database_refuses_are_isolated_and_the_rest_is_stored(ledger):
    client = ledger["redis"]
    refuse_poison_in_the_database()
    aliases = ["gpt-4o", "poison-1", "gpt-4o", "gpt-4o", "gpt-4o", "gpt-4o", "poison-2", "gpt-4o", "gpt-4o"]
    ids = [emit(client, gateway_fields(ledger, request_id=f"req-{n}", alias=a)) for n, a in enumerate(aliases)]

    (result,) = drain()

    assert (result.read, result.inserted, result.dead_lettered) == (9, 7, 2)
    assert stored_ids() == {f"req-{n}" for n, alias in enumerate(aliases) if alias == "gpt-4o"}
    hourly = UsageHourly.objects.get(org=ledger["org"])
    assert (hourly.requests, hourly.input_tokens) == (7, 700)  # rollups hold only what the ledger holds
    letters = {letter[b"dead_letter.entry_id"]: letter for _, letter in dead_letters(client)}
    assert set(letters) == {ids[1], ids[6]}
    assert all(POISON_CHECK in letter[b"dead_letter.reason"].decode() for letter in letters.values())
    assert all(letter[b"dead_letter.reason"].startswith(b"the database refused it") for letter in letters.values())
    assert pending(client) == 0


def test_events_of_an_org_deleted_since_it_was_seen_are_set_aside(ledger):
    """Ingestion remembers orgs it found for a minute; the ledger's foreign key still refuses a
    row of an org deleted meanwhile, and that row alone is set aside."""
    client = ledger["redis"]
    doomed = Organization.objects.create(name="Doomed", slug="doomed", require_mfa=False)
    doomed_id = str(doomed.pk)
    emit(client, gateway_fields(ledger, request_id="while-it-lived", org_id=doomed_id))
    drain()
    UsageRecord.objects.filter(org=doomed).delete()
    UsageHourly.objects.filter(org=doomed).delete()
    doomed.delete()
    emit(client, gateway_fields(ledger, request_id="ours-1"))
    gone = emit(client, gateway_fields(ledger, request_id="after-it-went", org_id=doomed_id))
    emit(client, gateway_fields(ledger, request_id="ours-2"))

    (result,) = drain()

    assert (result.inserted, result.dead_lettered) == (2, 1)
    assert stored_ids() == {"ours-1", "ours-2"}
    ((_, letter),) = dead_letters(client)
    assert letter[b"dead_letter.entry_id"] == gone
    assert b"violates foreign key constraint" in letter[b"dead_letter.reason"]


@pytest.fixture
def usage_table_locked():
    """Another session holds the ledger table, and this one waits at most 200 ms for a lock: the
    insert fails as in an outage (OperationalError), not for its data."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    other = psycopg.connect(**connection.get_connection_params())
    other.execute("LOCK TABLE budgets_usagerecord IN ACCESS EXCLUSIVE MODE")
    released = threading.Event()

    def release() -> None:
        other.rollback()
        other.close()
        released.set()

    yield release
    if not released.is_set():
        release()
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")


def test_a_database_failure_is_no_dead_letter_and_the_batch_is_read_again(ledger, usage_table_locked, monkeypatch):
    client = ledger["redis"]
    for number in range(3):
        emit(client, gateway_fields(ledger, request_id=f"req-{number}"))

    with pytest.raises(OperationalError):
        ingest_batch("test-consumer", 100)

    assert not dead_letters(client)
    assert pending(client) == 3  # unacknowledged: claimed again once idle
    usage_table_locked()
    monkeypatch.setattr(ingestion, "CLAIM_IDLE_MS", 0)
    assert ingest_batch("another-consumer", 100).inserted == 3
    assert pending(client) == 0


# Counted ------------------------------------------------------------------------------------


def test_dead_letters_are_counted(ledger):
    client = ledger["redis"]
    for alias in ("a\x00", "b\x00", "fine"):
        emit(client, gateway_fields(ledger, alias=alias))
    drain()
    emit(client, gateway_fields(ledger, alias="c\x00"))
    drain()
    stream = redis_keys().usage_stream
    assert client.xlen(f"{stream}:dead") == 3
    assert int(client.get(f"{stream}:dead:total")) == 3

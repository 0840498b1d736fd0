"""Draining the gateway's usage stream into the PostgreSQL ledger.

At-least-once from a Redis consumer group, exactly-once into the ledger: rows insert with
ON CONFLICT (request_id) DO NOTHING, rollups add only the rows that were inserted, and the
stream entries are acknowledged after the transaction commits. A consumer that crashes
before acknowledging leaves its entries pending; the next one claims them after a while.
"""

import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import redis
from django.db import connection, transaction
from psycopg.types.json import Jsonb

from fleet.redis_client import redis_client, redis_keys
from orgs.models import Organization

from .alerts import request_alert_checks_on_commit

log = logging.getLogger("budgets.ingestion")
GROUP = "ledger"
CLAIM_IDLE_MS = 60_000
MICROS = Decimal(1_000_000)

LEDGER_COLUMNS = (
    "request_id", "org_id", "team_id", "key_id", "alias", "deployment_id", "endpoint", "input_tokens",
    "output_tokens", "cost", "latency_ms", "ttft_ms", "status", "error_code", "stream", "node_id", "occurred_at",
    "attempts",
)  # fmt: skip
MAX_ATTEMPTS_RECORDED = 20


@dataclass(frozen=True)
class IngestResult:
    read: int
    inserted: int
    skipped: int


def ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def parse_attempts(text: str) -> list[dict]:
    """The upstream attempts of a request, kept to known fields and a bounded count."""
    attempts = json.loads(text or "[]")
    if not isinstance(attempts, list):
        raise ValueError("attempts must be a list")
    cleaned = []
    for attempt in attempts[:MAX_ATTEMPTS_RECORDED]:
        if not isinstance(attempt, dict):
            raise ValueError("an attempt must be an object")
        cleaned.append(
            {
                "deployment_id": str(attempt.get("deployment_id", ""))[:64],
                "status": int(attempt.get("status", 0)),
                "error_code": str(attempt.get("error_code", ""))[:64],
                "latency_ms": float(attempt.get("latency_ms", 0)),
            }
        )
    return cleaned


def parse_event(fields: dict[bytes, bytes]) -> tuple | None:
    """A ledger row from a stream entry, or None when the entry is malformed."""
    value = {k.decode(): v.decode() for k, v in fields.items()}
    try:
        return (
            value["request_id"][:64],
            uuid.UUID(value["org_id"]),
            uuid.UUID(value["team_id"]),
            uuid.UUID(value["key_id"]),
            value.get("alias", "")[:200],
            uuid.UUID(value["deployment_id"]) if value.get("deployment_id") else None,
            value.get("endpoint", "")[:32],
            max(0, int(value.get("input_tokens", 0))),
            max(0, int(value.get("output_tokens", 0))),
            Decimal(int(value.get("cost_micros", 0))) / MICROS,
            float(value.get("latency_ms", 0)),
            float(value.get("ttft_ms", 0)),
            int(value.get("status", 0)),
            value.get("error_code", "")[:64],
            value.get("stream") == "True",
            value.get("node_id", "")[:128],
            datetime.fromtimestamp(float(value["ts"]), tz=UTC),
            Jsonb(parse_attempts(value.get("attempts", "[]"))),
        )
    except (KeyError, ValueError, TypeError, ArithmeticError):
        return None


def _insert_ledger(rows: list[tuple]) -> list[tuple]:
    """Insert rows; returns those that were new (redelivered ones are skipped). Rows go in
    with COPY to a temporary table and one INSERT ... SELECT: a VALUES list with tens of
    thousands of placeholders spent most of its time just being parsed."""
    if not rows:
        return []
    columns = ", ".join(LEDGER_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS usage_incoming "
            "(LIKE budgets_usagerecord INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.cursor.copy(f"COPY usage_incoming ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO budgets_usagerecord ({columns}) SELECT {columns} FROM usage_incoming "  # noqa: S608
            f"ON CONFLICT (request_id) DO NOTHING RETURNING {columns}"
        )
        return cursor.fetchall()


def _add_to_rollups(inserted: list[tuple]) -> None:
    totals: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0, Decimal(0), 0.0])
    for row in inserted:
        record = dict(zip(LEDGER_COLUMNS, row, strict=True))
        hour = record["occurred_at"].replace(minute=0, second=0, microsecond=0)
        group = (record["org_id"], hour, record["team_id"], record["key_id"], record["alias"], record["deployment_id"])
        total = totals[group]
        total[0] += 1
        total[1] += 1 if record["status"] >= 400 else 0
        total[2] += record["input_tokens"]
        total[3] += record["output_tokens"]
        total[4] += record["cost"]
        total[5] += record["latency_ms"]
    if not totals:
        return
    values = ", ".join(["(gen_random_uuid(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(totals))
    params = [item for group, total in totals.items() for item in (*group, *total)]
    # Only placeholders are interpolated; every value travels as a parameter.
    sql = (
        "INSERT INTO budgets_usagehourly (id, org_id, hour, team_id, key_id, alias, deployment_id, requests, errors, "  # noqa: S608
        f"input_tokens, output_tokens, cost, latency_ms_sum) VALUES {values} "
        "ON CONFLICT ON CONSTRAINT usage_hourly_one_row DO UPDATE SET "
        "requests = budgets_usagehourly.requests + EXCLUDED.requests, "
        "errors = budgets_usagehourly.errors + EXCLUDED.errors, "
        "input_tokens = budgets_usagehourly.input_tokens + EXCLUDED.input_tokens, "
        "output_tokens = budgets_usagehourly.output_tokens + EXCLUDED.output_tokens, "
        "cost = budgets_usagehourly.cost + EXCLUDED.cost, "
        "latency_ms_sum = budgets_usagehourly.latency_ms_sum + EXCLUDED.latency_ms_sum"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _touch_keys(inserted: list[tuple]) -> None:
    newest: dict[uuid.UUID, datetime] = {}
    for row in inserted:
        key_id, occurred_at = row[3], row[16]
        if key_id not in newest or occurred_at > newest[key_id]:
            newest[key_id] = occurred_at
    if not newest:
        return
    values = ", ".join(["(%s::uuid, %s::timestamptz)"] * len(newest))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE keys_callerkey AS k SET last_used_at = v.at FROM (VALUES {values}) AS v(id, at) "  # noqa: S608
            "WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.at)",
            [item for pair in newest.items() for item in pair],
        )


def store_events(entries: list[tuple[bytes, dict]]) -> tuple[int, int]:
    """Write one batch of stream entries; returns (inserted, skipped as malformed or orphaned)."""
    rows = [row for _, fields in entries if (row := parse_event(fields)) is not None]
    known_orgs = set(Organization.objects.filter(pk__in={row[1] for row in rows}).values_list("pk", flat=True))
    usable = [row for row in rows if row[1] in known_orgs]
    with transaction.atomic():
        inserted = _insert_ledger(usable)
        _add_to_rollups(inserted)
        _touch_keys(inserted)
        if inserted:
            # One task per batch, after the rows are visible, for the orgs that spent in it.
            request_alert_checks_on_commit({row[1] for row in inserted})
    return len(inserted), len(entries) - len(usable)


def ingest_batch(consumer: str = "ingest-1", count: int = 1000, block_ms: int | None = None) -> IngestResult:
    """Read up to `count` events (waiting up to `block_ms` for some), store them, acknowledge."""
    client, stream = redis_client(), redis_keys().usage_stream
    ensure_group(client, stream)
    # Redis 7 answers [cursor, entries, deleted ids]; Redis 6.2 (embedded) [cursor, entries].
    claimed = client.xautoclaim(stream, GROUP, consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=count)[1]
    entries = [entry for entry in claimed if entry[1]]  # a trimmed entry comes back without fields
    if len(entries) < count:
        response = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count - len(entries), block=block_ms)
        for _, items in response or []:
            entries.extend(items)
    if not entries:
        return IngestResult(0, 0, 0)
    inserted, skipped = store_events(entries)
    client.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
    if skipped:
        log.warning("skipped %d malformed or orphaned usage events", skipped)
    return IngestResult(len(entries), inserted, skipped)

"""Draining the gateway's usage stream into the PostgreSQL ledger.

At-least-once from a Redis consumer group, exactly-once into the ledger: rows insert with
ON CONFLICT (request_id) DO NOTHING, rollups add only the rows that were inserted, and the
stream entries are acknowledged after the transaction commits. A consumer that crashes
before acknowledging leaves its entries pending; the next one claims them after a while.

No entry can stop ingestion (DESIGN.md promise 10). `parse_event` checks every field for what
the ledger can hold (UTF-8 without NUL, bounded numbers, UUIDs) and names what is wrong; should
the database still refuse a batch for its data, the batch is split in halves, each in its own
savepoint, until the refused rows stand alone. Entries that cannot be stored, including those of
an org that does not exist (any more), are set aside as dead letters (budgets/dead_letters.py)
with their reason and acknowledged; everything else in the batch is stored.

Speed: rows reach PostgreSQL as one pre-formatted COPY into a temporary table, and one statement
inserts them, adds the inserted ones to the hourly rollups and stamps the keys' last use, so
nothing but a count per org travels back. When ingestion keeps up, it waits
GATEHOUSE_INGEST_LINGER_MS (200 ms) after a short batch before reading again, so the fixed cost
of a batch is shared by many events (bench/RESULTS.md, system_cost).
"""

import functools
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
import redis
from django.conf import settings
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)

from capture import store as captured
from fleet.redis_client import redis_keys
from gateway.redis_url import sync_client
from orgs.models import Organization

from . import dead_letters
from .alerts import request_alert_checks_on_commit

log = logging.getLogger("budgets.ingestion")
GROUP = "ledger"
CLAIM_IDLE_MS = 60_000
MAX_ATTEMPTS_RECORDED = 20
MAX_ATTEMPTS_BYTES = 64 * 1024
LOGGED_REFUSALS = 5  # named in the log line of a batch; a flood of bad entries is one line per batch

# The fields of a usage event, in the order gateway/usage.py (UsageSink.emit) writes them.
FIELDS = (
    b"request_id", b"org_id", b"team_id", b"key_id", b"alias", b"deployment_id", b"input_tokens", b"output_tokens",
    b"cost_micros", b"latency_ms", b"ttft_ms", b"status", b"error_code", b"stream", b"endpoint", b"node_id", b"ts",
    b"attempts", b"client_request_id", b"client_ip", b"user_agent",
)  # fmt: skip
# The gateway's entries: the ledger's fields, then the sealed content (capture/store.py).
GATEWAY_LAYOUT = [*FIELDS, b"content"]
CLIENT_IP = FIELDS.index(b"client_ip")
TS = FIELDS.index(b"ts")
REQUIRED = (b"request_id", b"org_id", b"team_id", b"key_id", b"ts")
DEFAULTS = {
    b"alias": b"", b"deployment_id": b"", b"input_tokens": b"0", b"output_tokens": b"0", b"cost_micros": b"0",
    b"latency_ms": b"0", b"ttft_ms": b"0", b"status": b"0", b"error_code": b"", b"stream": b"False",
    b"endpoint": b"", b"node_id": b"", b"attempts": b"[]", b"client_request_id": b"", b"client_ip": b"",
    b"user_agent": b"",
}  # fmt: skip

# Bounds: what the ledger's columns hold, and far beyond any real request.
MAX_TOKENS = 2**31 - 1  # integer columns
MAX_COST_MICROS = 10**15  # a billion dollars for one request; numeric(18, 6) holds a thousand times more
MAX_MILLISECONDS = 10.0**9  # eleven days
MAX_STATUS = 999
MAX_TIMESTAMP = 253_402_300_799.0  # 9999-12-31 23:59:59 UTC, the last second Python can show
TEXT_LIMITS = {
    "request_id": 64, "alias": 200, "endpoint": 32, "error_code": 64, "node_id": 128, "client_request_id": 64,
}  # fmt: skip
USER_AGENT_LIMIT = 200
MAX_ADDRESS_LENGTH = 64  # an IPv6 address with a zone is at most 45 + a short interface name
ATTEMPT_REASONS = frozenset({"retry", "fallback"})
ATTEMPT_AFTER = frozenset({"timeout", "429", "5xx"})  # gateway/config.py RETRY_CONDITIONS

# Printable ASCII without the backslash: valid UTF-8, no NUL, and nothing COPY would read as an
# escape, a column or a row end, so it goes into the COPY text as it came.
_PLAIN = rb"[\x20-\x5b\x5d-\x7e]"
_PLAIN_TEXT = re.compile(_PLAIN + rb"*")
_UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL_UUID = re.compile(_UUID)
_COPY_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
_OCTET = rb"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = _OCTET + rb"(?:\." + _OCTET + rb"){3}"  # what PostgreSQL's inet takes as it is
_CANONICAL_IPV4 = re.compile(_IPV4)
# C0 and C1 controls, DEL: what a stored user agent never holds (gateway/usage.py user_agent).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _gateway_line() -> re.Pattern[bytes]:
    """A whole event as the gateway writes it, joined with tabs, every value within its bounds
    and already in the form COPY reads: such an event needs no other check. An event that does
    not match (odd but maybe valid) is checked field by field."""
    decimal = rb"\d{1,9}(?:\.\d{1,17})?"  # below MAX_MILLISECONDS, as str(float) writes it
    timestamp = rb"\d{1,11}(?:\.\d{1,17})?"  # below MAX_TIMESTAMP
    json_text = rb"[\x20\x21\x23-\x5b\x5d-\x7e]{0,64}"  # no quote or backslash: nothing escaped
    attempt = (
        rb'\{"deployment_id": ?"(?:' + _UUID + rb')?", ?"provider": ?"[a-z_]{1,32}", ?"status": ?\d{1,3}, ?'
        + rb'"error_code": ?"' + json_text + rb'", ?"latency_ms": ?' + decimal
        + rb'(?:, ?"reason": ?"(?:retry|fallback)", ?"after": ?"(?:timeout|429|5xx)")?\}'
    )  # fmt: skip
    fields = (
        _PLAIN + rb"{1,64}",  # request_id
        _UUID, _UUID, _UUID,  # org_id, team_id, key_id
        _PLAIN + rb"{0,200}",  # alias
        rb"(?:" + _UUID + rb")?",  # deployment_id
        rb"\d{1,9}", rb"\d{1,9}", rb"\d{1,15}",  # input_tokens, output_tokens, cost_micros
        decimal, decimal,  # latency_ms, ttft_ms
        rb"\d{1,3}",  # status
        _PLAIN + rb"{0,64}",  # error_code
        rb"True|False",  # stream
        _PLAIN + rb"{0,32}", _PLAIN + rb"{0,128}",  # endpoint, node_id
        timestamp,
        rb"\[(?:" + attempt + rb"(?:, ?" + attempt + rb"){0,%d})?\]" % (MAX_ATTEMPTS_RECORDED - 1),
        _PLAIN + rb"{0,64}",  # client_request_id
        rb"(?:" + _IPV4 + rb"|[0-9a-f:.]{2,45})?",  # client_ip; IPv6 is checked on its own (_parse_flat)
        _PLAIN + rb"{0,%d}" % USER_AGENT_LIMIT,  # user_agent
    )  # fmt: skip
    return re.compile(rb"\t".join(rb"(?:" + field + rb")" for field in fields))


_GATEWAY_LINE = _gateway_line()

# What the database says when a row's data cannot be stored. Connection and server failures
# (OperationalError, InterfaceError) are not among them: they propagate and the batch, still
# unacknowledged, is read again later.
DATA_ERRORS: tuple[type[Exception], ...] = (DataError, IntegrityError, psycopg.DataError, psycopg.IntegrityError)

# The temporary table COPY fills, in the column order of the lines `parse_event` formats. The
# foreign-key checks (deferred to COMMIT by Django) run with each insert instead, so that a row
# of an org deleted meanwhile fails inside its savepoint, where it can be isolated.
INCOMING_TABLE = """
CREATE TEMPORARY TABLE IF NOT EXISTS usage_incoming (
    request_id text, org_id uuid, team_id uuid, key_id uuid, alias text, deployment_id text,
    input_tokens integer, output_tokens integer, cost_micros bigint, latency_ms float8, ttft_ms float8,
    status integer, error_code text, stream text, endpoint text, node_id text, ts float8, attempts jsonb,
    client_request_id text, client_ip text, user_agent text
) ON COMMIT DELETE ROWS;
TRUNCATE usage_incoming;
SET CONSTRAINTS ALL IMMEDIATE
"""
# One statement: new rows into the ledger, those rows (and only those) into the hourly rollups
# and the keys' last use; a count per org comes back for the alert checks.
INSERT_INCOMING = """
WITH inserted AS (
    INSERT INTO budgets_usagerecord (
        request_id, org_id, team_id, key_id, alias, deployment_id, endpoint, input_tokens, output_tokens, cost,
        latency_ms, ttft_ms, status, error_code, stream, node_id, occurred_at, attempts, client_request_id, client_ip,
        user_agent
    )
    SELECT request_id, org_id, team_id, key_id, alias, NULLIF(deployment_id, '')::uuid, endpoint, input_tokens,
        output_tokens, cost_micros / 1000000.0, latency_ms, ttft_ms, status, error_code, stream = 'True', node_id,
        to_timestamp(ts), attempts, client_request_id, NULLIF(client_ip, '')::inet, user_agent
    FROM usage_incoming
    ON CONFLICT (request_id) DO NOTHING
    RETURNING org_id, team_id, key_id, alias, deployment_id, status, input_tokens, output_tokens, cost, latency_ms,
        occurred_at
), hourly AS (
    INSERT INTO budgets_usagehourly AS h (
        id, org_id, hour, team_id, key_id, alias, deployment_id, requests, errors, input_tokens, output_tokens, cost,
        latency_ms_sum
    )
    SELECT gen_random_uuid(), org_id, date_trunc('hour', occurred_at, 'UTC'), team_id, key_id, alias, deployment_id,
        count(*), count(*) FILTER (WHERE status >= 400), sum(input_tokens), sum(output_tokens), sum(cost),
        sum(latency_ms)
    FROM inserted
    GROUP BY org_id, date_trunc('hour', occurred_at, 'UTC'), team_id, key_id, alias, deployment_id
    ORDER BY 2, 3, 4, 5, 6, 7
    ON CONFLICT ON CONSTRAINT usage_hourly_one_row DO UPDATE SET
        requests = h.requests + EXCLUDED.requests,
        errors = h.errors + EXCLUDED.errors,
        input_tokens = h.input_tokens + EXCLUDED.input_tokens,
        output_tokens = h.output_tokens + EXCLUDED.output_tokens,
        cost = h.cost + EXCLUDED.cost,
        latency_ms_sum = h.latency_ms_sum + EXCLUDED.latency_ms_sum
), touched AS (
    UPDATE keys_callerkey AS k SET last_used_at = newest.at
    FROM (SELECT key_id, max(occurred_at) AS at FROM inserted GROUP BY key_id) AS newest
    WHERE k.id = newest.key_id AND (k.last_used_at IS NULL OR k.last_used_at < newest.at)
)
SELECT org_id, count(*) FROM inserted GROUP BY org_id
"""


class InvalidEvent(ValueError):
    """An entry the ledger must not take; the message is the reason its dead letter carries."""


class ParsedEvent(NamedTuple):
    entry_id: bytes
    org_id: bytes  # canonical text, as str(uuid) gives it
    line: bytes  # one row of COPY text, newline included
    capture: "captured.Incoming | None" = None  # the request's sealed content, when captured


def _with_content(event: ParsedEvent, content: bytes, request_id: bytes, ts: bytes) -> ParsedEvent:
    """The event with its captured content, if any: opened and stored after the row (_insert)."""
    if not content:
        return event
    incoming = captured.Incoming(request_id.decode("ascii", "replace"), event.org_id.decode(), float(ts), content)
    return event._replace(capture=incoming)


@dataclass(frozen=True)
class Refusal:
    entry_id: bytes
    reason: str


@dataclass(frozen=True)
class StoreOutcome:
    inserted: int  # new ledger rows; a redelivered event is stored but not inserted again
    refused: list[Refusal]  # entries that cannot be stored, with why


@dataclass(frozen=True)
class IngestResult:
    read: int
    inserted: int
    dead_lettered: int


def ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


# Parsing ------------------------------------------------------------------------------------


def _copy_text(value: str) -> bytes:
    return value.translate(_COPY_ESCAPES).encode()


def _text(name: str, value: bytes) -> bytes:
    """A text field as COPY text: valid UTF-8 without NUL, cut to its column's length."""
    limit = TEXT_LIMITS[name]
    if len(value) <= limit and _PLAIN_TEXT.fullmatch(value):
        return value
    if b"\x00" in value:
        raise InvalidEvent(f"{name} contains a NUL character")
    try:
        # Strict decoding also refuses surrogates, which UTF-8 cannot carry.
        text = value.decode()
    except UnicodeDecodeError:
        raise InvalidEvent(f"{name} is not valid UTF-8 (undecodable bytes or a lone surrogate)") from None
    if name == "request_id" and len(text) > limit:
        raise InvalidEvent(f"request_id is longer than {limit} characters")
    return _copy_text(text[:limit])


def _uuid(name: str, value: bytes) -> bytes:
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value.decode("ascii"))).encode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent(f"{name} is not a UUID") from None


def _integer(name: str, value: bytes, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidEvent(f"{name} is not an integer") from None
    if not low <= number <= high:
        raise InvalidEvent(f"{name} is out of range ({low} to {high})")
    return number


def _tokens(name: str, value: bytes) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidEvent(f"{name} is not an integer") from None
    if number > MAX_TOKENS:
        raise InvalidEvent(f"{name} is out of range (at most {MAX_TOKENS})")
    return max(0, number)  # as before: a negative count is read as none


def _number(name: str, value: bytes, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise InvalidEvent(f"{name} is not a number") from None
    if not 0 <= number <= high:  # also false for NaN
        raise InvalidEvent(f"{name} is out of range (0 to {high:g})")
    return number


def _client_ip(value: bytes) -> bytes:
    """The caller's address as PostgreSQL's inet takes it, or empty (stored as null) for
    anything that is not one: an odd address costs the row its client_ip, never the row."""
    if not value or _CANONICAL_IPV4.fullmatch(value):
        return value
    return _address(value) if len(value) <= MAX_ADDRESS_LENGTH else b""


@functools.lru_cache(maxsize=4096)  # callers come again, and parsing an IPv6 address takes microseconds
def _address(value: bytes) -> bytes:
    try:
        address = ipaddress.ip_address(value.decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
        return b""
    # inet takes no IPv6 zone ("fe80::1%eth0"); the address without it is still the caller's.
    return str(address).partition("%")[0].encode()


def _user_agent(value: bytes) -> bytes:
    """The caller's User-Agent as COPY text: control characters removed, undecodable bytes
    replaced, cut to its column. Never refuses: it is the caller's text, not the gateway's."""
    if len(value) <= USER_AGENT_LIMIT and _PLAIN_TEXT.fullmatch(value):
        return value
    text = value[: 4 * USER_AGENT_LIMIT].decode("utf-8", "replace")  # bounded work; no surrogate survives
    return _copy_text(_CONTROLS.sub("", text)[:USER_AGENT_LIMIT])


def _attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    cleaned = {"deployment_id": str(attempt.get("deployment_id", ""))[:64]}
    if "provider" in attempt:
        cleaned["provider"] = str(attempt["provider"])[:32]
    cleaned.update(
        status=_bounded(int(attempt.get("status", 0)), MAX_STATUS),
        error_code=str(attempt.get("error_code", ""))[:64],
        latency_ms=_bounded(float(attempt.get("latency_ms", 0)), MAX_MILLISECONDS),
    )
    reason, after = attempt.get("reason"), attempt.get("after")
    if isinstance(reason, str) and reason in ATTEMPT_REASONS:
        cleaned["reason"] = reason
        if isinstance(after, str) and after in ATTEMPT_AFTER:
            cleaned["after"] = after
    return cleaned


def parse_attempts(value: bytes) -> bytes:
    """The upstream attempts of a request as COPY text of JSON: known fields (gateway/usage.py
    UsageEvent), a bounded count."""
    if value in (b"[]", b""):
        return b"[]"
    if len(value) > MAX_ATTEMPTS_BYTES:
        raise InvalidEvent(f"attempts is longer than {MAX_ATTEMPTS_BYTES} bytes")
    try:
        attempts = json.loads(value)
        if not isinstance(attempts, list) or not all(isinstance(attempt, dict) for attempt in attempts):
            raise InvalidEvent("attempts must be a list of objects")
        cleaned = [_attempt(attempt) for attempt in attempts[:MAX_ATTEMPTS_RECORDED]]
        text = json.dumps(cleaned, ensure_ascii=False, allow_nan=False)
    except InvalidEvent:
        raise
    except (ValueError, TypeError, ArithmeticError, RecursionError):
        raise InvalidEvent("attempts is not a JSON list of attempts") from None
    if "\\u0000" in text:
        raise InvalidEvent("attempts contains a NUL character")
    try:
        return _copy_text(text)
    except UnicodeEncodeError:
        raise InvalidEvent("attempts contains a lone surrogate") from None


def _bounded(number: Any, high: float) -> Any:
    if not 0 <= number <= high:
        raise ValueError("out of range")
    return number


def _parse_values(entry_id: bytes, values: Sequence[bytes]) -> ParsedEvent:
    """The event whose field values come in the order of FIELDS."""
    (
        request_id, org_id, team_id, key_id, alias, deployment_id, input_tokens, output_tokens, cost_micros,
        latency_ms, ttft_ms, status, error_code, stream, endpoint, node_id, ts, attempts, client_request_id,
        client_ip, user_agent,
    ) = values  # fmt: skip
    if not request_id:
        raise InvalidEvent("request_id is empty")
    org = _uuid("org_id", org_id)
    line = b"%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%r\t%r\t%d\t%s\t%s\t%s\t%s\t%r\t%s\t%s\t%s\t%s\n" % (
        _text("request_id", request_id),
        org,
        _uuid("team_id", team_id),
        _uuid("key_id", key_id),
        _text("alias", alias),
        _uuid("deployment_id", deployment_id) if deployment_id else b"",
        _tokens("input_tokens", input_tokens),
        _tokens("output_tokens", output_tokens),
        _integer("cost_micros", cost_micros, 0, MAX_COST_MICROS),
        _number("latency_ms", latency_ms, MAX_MILLISECONDS),
        _number("ttft_ms", ttft_ms, MAX_MILLISECONDS),
        _integer("status", status, 0, MAX_STATUS),
        _text("error_code", error_code),
        b"True" if stream == b"True" else b"False",
        _text("endpoint", endpoint),
        _text("node_id", node_id),
        _number("ts", ts, MAX_TIMESTAMP),
        parse_attempts(attempts),
        _text("client_request_id", client_request_id),
        _client_ip(client_ip),
        _user_agent(user_agent),
    )
    return ParsedEvent(entry_id, org, line)


def parse_event(fields: Mapping[bytes, bytes], entry_id: bytes = b"") -> ParsedEvent:
    """The ledger row of a stream entry, or InvalidEvent naming what is wrong with it."""
    for name in REQUIRED:
        if name not in fields:
            raise InvalidEvent(f"{name.decode()} is missing")
    event = _parse_values(entry_id, [fields.get(name, DEFAULTS.get(name, b"")) for name in FIELDS])
    return _with_content(event, fields.get(b"content", b""), fields[b"request_id"], fields[b"ts"])


def _parse_guarded(parse: Callable[[], ParsedEvent], entry_id: bytes, refused: list[Refusal]) -> ParsedEvent | None:
    try:
        return parse()
    except InvalidEvent as invalid:
        refused.append(Refusal(entry_id, str(invalid)))
    except Exception as error:  # whatever an entry holds, it must not stop ingestion
        refused.append(Refusal(entry_id, f"cannot be read: {type(error).__name__}"))
    return None


# Storing ------------------------------------------------------------------------------------


def _database_reason(error: Exception) -> str:
    cause = error if isinstance(error, psycopg.Error) else error.__cause__
    message = cause.diag.message_primary if isinstance(cause, psycopg.Error) else None
    return f"the database refused it: {message or type(error).__name__}"[: dead_letters.REASON_LIMIT]


def _insert(events: Sequence[ParsedEvent]) -> list[tuple[uuid.UUID, int]]:
    """Insert the events (redelivered ones are skipped); returns (org id, rows inserted) pairs."""
    with connection.cursor() as cursor:
        cursor.execute(INCOMING_TABLE)
        with cursor.cursor.copy("COPY usage_incoming FROM STDIN") as copy:
            copy.write(b"".join(event.line for event in events))
        cursor.execute(INSERT_INCOMING)
        counts = cursor.fetchall()
    _store_captures([event.capture for event in events if event.capture is not None])
    return counts


def _store_captures(items: list["captured.Incoming"]) -> None:
    """Captured content, after its rows: in a savepoint of its own, so that content the
    database refuses costs the content, never the usage rows (they are billed regardless)."""
    if not items:
        return
    try:
        with transaction.atomic():
            captured.store(items)
    except DatabaseError as error:
        log.error("captured content of %d requests could not be stored: %s", len(items), _database_reason(error))


def _split(events: Sequence[ParsedEvent], error: Exception, refused: list[Refusal]) -> list[tuple[uuid.UUID, int]]:
    """Events the database refused together: each half on its own, until the rows it refuses
    stand alone and are set aside."""
    if len(events) == 1:
        refused.append(Refusal(events[0].entry_id, _database_reason(error)))
        return []
    middle = len(events) // 2
    return _insert_isolating(events[:middle], refused) + _insert_isolating(events[middle:], refused)


def _insert_isolating(events: Sequence[ParsedEvent], refused: list[Refusal]) -> list[tuple[uuid.UUID, int]]:
    try:
        with transaction.atomic():
            return _insert(events)
    except DATA_ERRORS as error:
        return _split(events, error, refused)


def _note_spend(counts: list[tuple[uuid.UUID, int]]) -> int:
    inserted = sum(count for _, count in counts)
    if inserted:
        # After the rows are visible, for the orgs that spent in it: each org is checked at most
        # once per GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS (budgets/alerts.py).
        request_alert_checks_on_commit({org_id for org_id, count in counts if count})
    return inserted


# Orgs found in PostgreSQL lately. Only a hint that saves a query per batch: the ledger's foreign
# key still checks every row, and a row of an org deleted since is isolated and set aside.
_known_orgs: dict[bytes, float] = {}
KNOWN_ORG_SECONDS = 60.0


def _unknown_orgs(events: list[ParsedEvent]) -> set[bytes]:
    now = time.monotonic()
    asked = {org_id for org_id in {event.org_id for event in events} if _known_orgs.get(org_id, 0.0) < now}
    if asked:
        found = Organization.objects.filter(pk__in=[org_id.decode() for org_id in asked]).values_list("pk", flat=True)
        for pk in found:
            _known_orgs[str(pk).encode()] = now + KNOWN_ORG_SECONDS
    return {org_id for org_id in asked if _known_orgs.get(org_id, 0.0) < now}


def _store_parsed(events: list[ParsedEvent], refused: list[Refusal]) -> StoreOutcome:
    if events and (unknown := _unknown_orgs(events)):
        refused.extend(Refusal(event.entry_id, "unknown org") for event in events if event.org_id in unknown)
        events = [event for event in events if event.org_id not in unknown]
    if not events:
        return StoreOutcome(0, refused)
    try:
        # The whole batch at once, without a savepoint of its own: the common case.
        with transaction.atomic():
            return StoreOutcome(_note_spend(_insert(events)), refused)
    except DATA_ERRORS as error:
        with transaction.atomic():
            return StoreOutcome(_note_spend(_split(events, error, refused)), refused)


def store_events(entries: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> StoreOutcome:
    """Write one batch of stream entries; returns how many rows were new and which entries
    could not be stored, with why. Nothing in an entry makes this raise."""
    refused: list[Refusal] = []
    events = []
    for entry_id, fields in entries:
        event = _parse_guarded(functools.partial(parse_event, fields, entry_id), entry_id, refused)
        if event is not None:
            events.append(event)
    return _store_parsed(events, refused)


# Reading the stream -------------------------------------------------------------------------


def _stream_client() -> redis.Redis:
    """A client of REDIS_URL with stream replies left as Redis sends them: a flat
    [name, value, ...] list per entry is parsed by position, without building a dict."""
    return _stream_client_for(settings.REDIS_URL)


@functools.cache
def _stream_client_for(url: str) -> redis.Redis:
    client = sync_client(url, timeout=5, connect_timeout=5)
    for command in ("XREADGROUP", "XAUTOCLAIM"):
        client.set_response_callback(command, lambda response, **options: response)
    return client  # type: ignore[return-value]  # a RedisCluster answers the same commands


def _parse_flat(entry_id: bytes, flat: list[bytes]) -> ParsedEvent:
    if flat[0::2] == GATEWAY_LAYOUT:
        values, content = flat[1:-2:2], flat[-1]
        line = b"\t".join(values)
        address = values[CLIENT_IP]
        if _GATEWAY_LINE.fullmatch(line) and _client_ip(address) == address:
            event = ParsedEvent(entry_id, values[1], line + b"\n")
        else:
            event = _parse_values(entry_id, values)
        return _with_content(event, content, values[0], values[TS])
    return parse_event(dict(zip(flat[0::2], flat[1::2], strict=True)), entry_id)


def _acknowledge_trimmed(client: redis.Redis, stream: str, consumer: str, count: int) -> None:
    """Entries trimmed from the stream while pending have nothing left to store. Redis 7 drops
    them from the pending list itself; Redis 6.2 (the embedded one) claims them as nil, id and
    all, so find them among this consumer's pending entries and acknowledge them, or they would
    be claimed again forever."""
    pending = client.xpending_range(stream, GROUP, min="-", max="+", count=count, consumername=consumer)
    ids = [item["message_id"] for item in pending]
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(stream, entry_id, entry_id)
    gone = [entry_id for entry_id, found in zip(ids, pipe.execute(), strict=True) if not found]
    if gone:
        client.xack(stream, GROUP, *gone)
        log.warning("acknowledged %d usage events trimmed from the stream before they were stored", len(gone))


def _read_own_pending(client: redis.Redis, stream: str, consumer: str, count: int) -> list:
    response = client.xreadgroup(GROUP, consumer, {stream: "0"}, count=count)
    items = next(iter(response.values()), []) if isinstance(response, dict) else (response or [[None, []]])[0][1]
    entries = [entry for entry in items if entry and entry[1]]
    gone = [entry[0] for entry in items if entry and not entry[1]]
    if gone:  # trimmed from the stream while pending: nothing to store
        client.xack(stream, GROUP, *gone)
    return entries


def _read(client: redis.Redis, stream: str, consumer: str, count: int, block_ms: int | None) -> list:
    # Redis 7 answers [cursor, entries, deleted ids]; Redis 6.2 (embedded) [cursor, entries].
    claimed = client.xautoclaim(stream, GROUP, consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=count)[1]
    entries = [entry for entry in claimed if entry and entry[1]]
    if len(entries) < len(claimed):
        _acknowledge_trimmed(client, stream, consumer, count)
    if len(entries) < count:
        response = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count - len(entries), block=block_ms)
        # RESP3 answers {stream: entries}, RESP2 [[stream, entries]].
        for items in response.values() if isinstance(response, dict) else [items for _, items in response or []]:
            entries.extend(items)
    return entries


@dataclass(frozen=True)
class Batch:
    """Stream entries as read, parsed: the events to store and the entries already refused."""

    entries: list[tuple[bytes, list[bytes]]]
    events: list[ParsedEvent]
    refused: list[Refusal]


def read_batch(consumer: str, count: int, block_ms: int | None, *, own_pending: bool = False) -> Batch:
    """Claim or read up to `count` entries and parse them; with `own_pending`, the entries this
    consumer read before and never acknowledged (a crash or an outage). Touches Redis only."""
    client, stream = _stream_client(), redis_keys().usage_stream
    ensure_group(client, stream)
    entries = (
        _read_own_pending(client, stream, consumer, count)
        if own_pending
        else _read(client, stream, consumer, count, block_ms)
    )
    if entries and isinstance(entries[0][1], dict):  # a Cluster's nodes parse replies before our callbacks
        entries = [(entry_id, [part for pair in fields.items() for part in pair]) for entry_id, fields in entries]
    refused: list[Refusal] = []
    events = []
    for entry_id, flat in entries:
        event = _parse_guarded(functools.partial(_parse_flat, entry_id, flat), entry_id, refused)
        if event is not None:
            events.append(event)
    return Batch(entries, events, refused)


def finish_batch(batch: Batch) -> IngestResult:
    """Store a batch, set aside what cannot be stored, then acknowledge every entry of it."""
    if not batch.entries:
        return IngestResult(0, 0, 0)
    outcome = _store_parsed(batch.events, list(batch.refused))
    # After the commit: dead letters first, then the acknowledgement. A crash between the two
    # re-reads the batch, which inserts nothing twice and at worst sets an entry aside twice.
    pipe = _stream_client().pipeline(transaction=False)
    if outcome.refused:
        flat_fields = dict(batch.entries)
        letters = [
            dead_letters.Letter(r.entry_id, _fields_of(flat_fields[r.entry_id]), r.reason) for r in outcome.refused
        ]
        dead_letters.set_aside(pipe, letters, at=time.time())
        shown = ", ".join(f"{r.entry_id.decode()} ({r.reason})" for r in outcome.refused[:LOGGED_REFUSALS])
        log.warning("%d usage entries set aside as dead letters: %s", len(outcome.refused), shown)
    pipe.xack(redis_keys().usage_stream, GROUP, *[entry_id for entry_id, _ in batch.entries])
    pipe.execute()
    return IngestResult(len(batch.entries), outcome.inserted, len(outcome.refused))


def ingest_batch(consumer: str = "ingest-1", count: int = 1000, block_ms: int | None = None) -> IngestResult:
    """Read up to `count` events (waiting up to `block_ms` for some), store them, set aside
    those that cannot be stored, acknowledge them all."""
    return finish_batch(read_batch(consumer, count, block_ms))


@dataclass
class DrainTotals:
    read: int = 0
    inserted: int = 0
    dead_lettered: int = 0

    def add(self, result: IngestResult) -> None:
        self.read += result.read
        self.inserted += result.inserted
        self.dead_lettered += result.dead_lettered


# An outage of PostgreSQL or Redis: the batch in hand stays unacknowledged and is claimed again
# (after CLAIM_IDLE_MS) once both are back. Data errors are not among these (dead letters).
OUTAGES: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
FIRST_PAUSE_SECONDS = 0.5
LONGEST_PAUSE_SECONDS = 5.0  # one reconnect attempt per pause: cheap, and the outage ends sooner


def drain(
    consumer: str, count: int, *, block_ms: int | None, once: bool, stopping: Callable[[], bool] = lambda: False
) -> DrainTotals:
    """Ingest batch after batch until `stopping()` (or, with `once`, until the stream is empty).

    Rides out PostgreSQL and Redis outages: it waits (with backoff) and goes on by itself, as
    every long-running process must (DESIGN.md promise 10). With `once` an outage is raised."""
    totals = DrainTotals()
    pause = FIRST_PAUSE_SECONDS
    while True:
        progress = totals.read
        try:
            _drain_batches(consumer, count, block_ms=block_ms, once=once, stopping=stopping, totals=totals)
            return totals
        except OUTAGES as error:
            if once:
                raise
            pause = FIRST_PAUSE_SECONDS if totals.read > progress else min(pause * 2, LONGEST_PAUSE_SECONDS)
            log.warning("ingestion waits %.1f s for PostgreSQL or Redis to come back: %s", pause, error)
            connection.close()  # a broken connection is replaced on the next query
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline:
                if stopping():
                    return totals
                time.sleep(0.1)


def _drain_batches(
    consumer: str, count: int, *, block_ms: int | None, once: bool, stopping: Callable[[], bool], totals: DrainTotals
) -> None:
    """The next batch is read and parsed in a thread while this one is stored: Python's time
    and the database's overlap. Each batch is still acknowledged only after its own commit; a
    batch read ahead when the loop stops is stored before it returns."""
    # First what this consumer read before and never acknowledged (at start, after an outage):
    # it is stored now rather than claimed back after CLAIM_IDLE_MS.
    while (pending := read_batch(consumer, count, None, own_pending=True)).entries:
        totals.add(finish_batch(pending))
    linger = 0.0 if once else settings.GATEHOUSE_INGEST_LINGER_MS / 1000
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-reader") as reader:
        ahead: Future[Batch] | None = reader.submit(read_batch, consumer, count, block_ms)
        while ahead is not None:
            batch = ahead.result()
            done = stopping() or (once and not batch.entries)
            # A batch short of `count` means ingestion keeps up: let events gather for a moment
            # before the next read, so each batch's fixed cost (its Redis and PostgreSQL round
            # trips) is paid for many events rather than a handful.
            pause = linger if 0 < len(batch.entries) < count else 0.0
            ahead = None if done else reader.submit(_read_after, pause, consumer, count, block_ms)
            totals.add(finish_batch(batch))


def _read_after(pause: float, consumer: str, count: int, block_ms: int | None) -> Batch:
    if pause:
        time.sleep(pause)
    return read_batch(consumer, count, block_ms)


def _fields_of(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[0::2], flat[1::2], strict=False))

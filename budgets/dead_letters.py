"""Usage events the ledger cannot store, set aside in a Redis stream beside the usage stream.

A dead letter is the original entry's fields, byte for byte, plus three of its own: the reason,
the original entry id and the time (Unix seconds). Ingestion adds one and acknowledges the
original instead of stopping on it (DESIGN.md promise 10); platform staff read them on the
dead-letter page and replay them through the same store path after a fix (budgets/replay.py).

`<usage stream>:dead:total` counts every event ever set aside; XLEN of the stream is how many
wait. Both are shown on the page and exported on the portal's /metrics.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from fleet.redis_client import redis_client, redis_keys

REASON = b"dead_letter.reason"
ENTRY_ID = b"dead_letter.entry_id"
AT = b"dead_letter.at"
OWN_FIELDS = frozenset({REASON, ENTRY_ID, AT})
REASON_LIMIT = 300
# Approximate trim, as for the usage stream: a flood of unstorable events cannot exhaust Redis.
MAX_LENGTH = 1_000_000
SHOWN_VALUE_LIMIT = 200
SHOWN_FIELDS_LIMIT = 40


def stream_name() -> str:
    return f"{redis_keys().usage_stream}:dead"


def counter_name() -> str:
    return f"{redis_keys().usage_stream}:dead:total"


@dataclass(frozen=True)
class Letter:
    """One event to set aside: where it came from, its original fields and why."""

    entry_id: bytes
    fields: Mapping[bytes, bytes]
    reason: str


def letter_fields(letter: Letter, *, at: float) -> dict[bytes, bytes]:
    fields = {name: value for name, value in letter.fields.items() if name not in OWN_FIELDS}
    fields[REASON] = letter.reason[:REASON_LIMIT].encode("utf-8", "backslashreplace")
    fields[ENTRY_ID] = letter.entry_id
    fields[AT] = f"{at:.3f}".encode()
    return fields


def set_aside(pipe: redis.client.Pipeline, letters: Iterable[Letter], *, at: float, count: bool = True) -> int:
    """Queue the dead letters (and the counter's increment) on `pipe`; the caller executes it."""
    stream, added = stream_name(), 0
    for letter in letters:
        fields = cast(dict[Any, Any], letter_fields(letter, at=at))
        pipe.xadd(stream, fields, maxlen=MAX_LENGTH, approximate=True)
        added += 1
    if added and count:
        pipe.incrby(counter_name(), added)
    return added


# Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    id: str  # in the dead-letter stream
    entry_id: str  # in the usage stream, when it was set aside
    reason: str
    at: datetime | None
    request_id: str
    org_id: str
    fields: dict[bytes, bytes]  # the original fields, as they were

    @property
    def shown_fields(self) -> list[tuple[str, str]]:
        """The original fields for a page: control characters and undecodable bytes escaped,
        each value capped (usage events hold no secrets, but a caller chose some of them)."""
        return [(shown(name, 64), shown(value)) for name, value in list(self.fields.items())[:SHOWN_FIELDS_LIMIT]]


def shown(value: bytes, limit: int = SHOWN_VALUE_LIMIT) -> str:
    text = value[: limit * 4].decode("utf-8", "backslashreplace")
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(value):,} bytes)"


def _letter(letter_id: bytes, raw: Mapping[bytes, bytes]) -> DeadLetter:
    try:
        at: datetime | None = datetime.fromtimestamp(float(raw.get(AT, b"")), tz=UTC)
    except (ValueError, OverflowError, OSError):
        at = None
    return DeadLetter(
        id=letter_id.decode(),
        entry_id=raw.get(ENTRY_ID, b"").decode("ascii", "replace"),
        reason=shown(raw.get(REASON, b""), REASON_LIMIT),
        at=at,
        request_id=shown(raw.get(b"request_id", b""), 64),
        org_id=shown(raw.get(b"org_id", b""), 64),
        fields={name: value for name, value in raw.items() if name not in OWN_FIELDS},
    )


Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _entries(reply: Any) -> Entries:
    """A stream reply as redis-py gives it with bytes responses (its stubs type it loosely)."""
    return cast(Entries, reply)


def waiting() -> int:
    return int(cast(int, redis_client().xlen(stream_name())))


def total_set_aside() -> int:
    return int(cast(bytes | None, redis_client().get(counter_name())) or 0)


def newest_first(*, before: str | None = None, count: int = 25) -> tuple[list[DeadLetter], str | None]:
    """One page of dead letters, newest first, older than `before` (an id); and the next page's
    `before`, or None on the last page."""
    high = f"({before}" if before else "+"
    rows = _entries(redis_client().xrevrange(stream_name(), max=high, min="-", count=count + 1))
    letters = [_letter(letter_id, raw) for letter_id, raw in rows[:count]]
    return letters, (letters[-1].id if len(rows) > count else None)


def find(ids: Iterable[str]) -> list[DeadLetter]:
    """The dead letters with these ids, in id order; unknown ids are left out."""
    client, stream, found = redis_client(), stream_name(), []
    for letter_id in sorted(set(ids), key=stream_id_order):
        for found_id, raw in _entries(client.xrange(stream, min=letter_id, max=letter_id, count=1)):
            found.append(_letter(found_id, raw))
    return found


def oldest_first(*, after: str | None, until: str, count: int) -> list[DeadLetter]:
    """Up to `count` dead letters after `after` (exclusive) up to `until` (inclusive)."""
    low = f"({after}" if after else "-"
    rows = _entries(redis_client().xrange(stream_name(), min=low, max=until, count=count))
    return [_letter(letter_id, raw) for letter_id, raw in rows]


def newest_id() -> str | None:
    rows = _entries(redis_client().xrevrange(stream_name(), count=1))
    return rows[0][0].decode() if rows else None


def stream_id_order(letter_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = letter_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def is_stream_id(text: str) -> bool:
    milliseconds, dash, sequence = text.partition("-")
    return bool(dash) and milliseconds.isdigit() and sequence.isdigit() and len(text) <= 41 and text.isascii()

"""Usage events: one per request, appended to a Redis stream the control plane ingests."""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as redis

from . import metrics
from .redis_cluster_pipe import Pipe
from .redis_keys import RedisKeys
from .redis_pipe import pack
from .usage_spool import UsageSpool

log = logging.getLogger("gateway.usage")
STREAM_MAX_LENGTH = 1_000_000  # approximate trim; ingestion keeps far ahead of this
MAX_BUFFERED = 100_000  # events kept through a Redis outage before the oldest are dropped


@dataclass(slots=True)
class UsageEvent:
    request_id: str
    org_id: str
    team_id: str
    key_id: str
    alias: str
    deployment_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    status: int = 200
    error_code: str = ""
    stream: bool = False
    endpoint: str = "chat.completions"
    node_id: str = ""
    ts: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    client_request_id: str = ""  # the caller's X-Request-Id; request_id is always the gateway's own

    def stream_fields(self) -> dict[bytes, bytes]:
        """The stream entry, encoded here: any text, even a lone surrogate that slipped past
        validation, becomes bytes (backslash-escaped), so no value can fail the flush."""
        text = {
            b"request_id": self.request_id,
            b"org_id": self.org_id,
            b"team_id": self.team_id,
            b"key_id": self.key_id,
            b"alias": self.alias,
            b"deployment_id": self.deployment_id,
            b"input_tokens": str(self.input_tokens),
            b"output_tokens": str(self.output_tokens),
            b"cost_micros": str(self.cost_micros),
            b"latency_ms": str(self.latency_ms),
            b"ttft_ms": str(self.ttft_ms),
            b"status": str(self.status),
            b"error_code": self.error_code,
            b"stream": str(self.stream),
            b"endpoint": self.endpoint,
            b"node_id": self.node_id,
            b"ts": str(self.ts),
        }
        fields = {name: value.encode("utf-8", "backslashreplace") for name, value in text.items()}
        fields[b"attempts"] = orjson.dumps(self.attempts)
        fields[b"client_request_id"] = self.client_request_id.encode("utf-8", "backslashreplace")
        return fields

    def xadd(self, head: bytes) -> bytes:
        """The XADD command appending this event, in RESP, after `head` (see `xadd_head`)."""
        parts = [head]
        for name, value in self.stream_fields().items():
            parts += (_FIELD_NAMES[name], b"$%d\r\n%b\r\n" % (len(value), value))
        return b"".join(parts)


_FIELD_COUNT = 19  # the fields of UsageEvent.stream_fields
_FIELD_NAMES = {
    name: pack((name,))[len(b"*1\r\n") :]  # each name as a RESP bulk string
    for name in UsageEvent("", "", "", "", "").stream_fields()
}
assert len(_FIELD_NAMES) == _FIELD_COUNT  # noqa: S101  (a field added must be counted)


def xadd_head(stream: str) -> bytes:
    """What every XADD to `stream` starts with: the array header, then `XADD <stream> MAXLEN ~
    <STREAM_MAX_LENGTH> *`; the event's fields follow."""
    command = pack(("XADD", stream, "MAXLEN", "~", STREAM_MAX_LENGTH, "*"))
    return b"*%d\r\n" % (6 + 2 * _FIELD_COUNT) + command[len(b"*6\r\n") :]


class UsageSink:
    """Buffers usage events and appends them to the stream in one pipelined round trip every
    FLUSH_SECONDS (or sooner when BATCH_SIZE wait), instead of one round trip per request.
    With a spool (gateway/usage_spool.py), each event is also logged to disk when it is emitted,
    so a worker killed without warning loses none: it sends them when it starts again.

    While Redis cannot be reached, the buffer is also written to the spool (on disk, in the
    worker's state folder), so a worker stopped or killed during the outage sends those events
    when it starts again; attempts back off from RETRY_SECONDS to RETRY_MAX_SECONDS, and the
    outage is logged once when it starts and once when it ends.

    The flush loop is supervised: an error is logged and counted, and the loop goes on."""

    FLUSH_SECONDS = 0.01
    BATCH_SIZE = 500
    RETRY_SECONDS = 0.1
    RETRY_MAX_SECONDS = 5.0

    def __init__(self, client: Pipe, keys: RedisKeys, node_id: str, spool: UsageSpool | None = None):
        self.client, self.stream, self.node_id = client, keys.usage_stream, node_id
        self.head = xadd_head(keys.usage_stream)
        self.buffer: list[bytes] = []  # XADD commands, encoded when emitted
        self.dropped = 0
        self.spool = spool
        self._spooled = 0  # how many of the buffer's first commands the spool already holds
        self._failing_since: float | None = None  # the outage in progress, if any
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def emit(self, event: UsageEvent) -> None:
        event.node_id, event.ts = self.node_id, event.ts or time.time()
        command = event.xadd(self.head)
        if self.spool is not None:
            self.spool.log(command)  # before the answer goes out: a killed worker loses nothing
        self.buffer.append(command)
        if len(self.buffer) >= self.BATCH_SIZE:
            self._wake.set()

    def persist(self, events: list[UsageEvent]) -> None:
        """Write events straight to the spool, durably, before `start` sends what it holds: for
        events whose only other copy is about to be deleted (gateway/stream_journal.py)."""
        if self.spool is None or self._task is not None:
            raise RuntimeError("persist needs a spool and comes before start")
        self.spool.append([event.xadd(self.head) for event in events])

    def start(self) -> None:
        if self.spool is not None:
            spooled = self.spool.recover()
            if spooled:
                log.warning("sending %d usage events spooled while Redis could not be reached", len(spooled))
                self.buffer[:0] = spooled
                self._spooled = len(spooled)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        retry = self.RETRY_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.FLUSH_SECONDS)
            self._wake.clear()
            try:
                sent = await self.flush()
            except Exception:  # supervised: nothing may stop usage recording for good
                metrics.usage_flush_errors.inc()
                log.exception("usage flush failed; the loop goes on")
                sent = False
            if sent:
                retry = self.RETRY_SECONDS
            else:
                await asyncio.sleep(retry)
                retry = min(retry * 2, self.RETRY_MAX_SECONDS)

    async def flush(self) -> bool:
        """Send the buffer; False (the events kept, and spooled) if Redis cannot take them."""
        if not self.buffer:
            return True
        batch, self.buffer = self.buffer, []
        if self.spool is not None:
            self.spool.cut()
        try:
            await self.client.call_packed(batch, key=self.stream)
        except (redis.RedisError, OSError) as error:
            # Kept for the next flush, bounded so a long Redis outage cannot exhaust memory.
            self.buffer = batch + self.buffer
            if len(self.buffer) > MAX_BUFFERED:
                self.dropped += len(self.buffer) - MAX_BUFFERED
                metrics.usage_dropped.inc(len(self.buffer) - MAX_BUFFERED)
                self.buffer = self.buffer[-MAX_BUFFERED:]
                self._spooled = 0  # the oldest are gone: the spool is written afresh
                if self.spool is not None:
                    self.spool.clear()
            metrics.usage_flush_errors.inc()
            metrics.usage_buffered.set(len(self.buffer))
            if await self._spool_new() and self.spool is not None:
                self.spool.sent()  # the spool holds the batch now
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("usage events cannot be sent to Redis, kept and spooled until it returns: %s", error)
            return False
        if self.spool is not None:
            self.spool.sent()
        if self._spooled:  # everything the spool held is in Redis now
            self._spooled = 0
            if self.spool is not None:
                self.spool.clear()
        if self._failing_since is not None:
            log.warning("usage events reach Redis again after %.1f s of outage", time.monotonic() - self._failing_since)
            self._failing_since = None
        metrics.usage_buffered.set(len(self.buffer))
        return True

    async def _spool_new(self) -> bool:
        """Write the buffered events the spool does not hold yet (off the event loop); whether
        the spool holds the whole buffer now."""
        if self.spool is None or self._spooled >= len(self.buffer):
            return self.spool is not None
        new = self.buffer[self._spooled :]
        try:
            await asyncio.to_thread(self.spool.append, new)
        except OSError as error:
            log.error("usage events could not be spooled to %s: %s", self.spool.path, error)
            return False
        self._spooled += len(new)
        return True

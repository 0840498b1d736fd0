"""Usage events: one per request, appended to a Redis stream the control plane ingests."""

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Mapping
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
    """One request as the ledger (budgets.models.UsageRecord) stores it.

    `attempts` lists every upstream attempt in order, each
    `{"deployment_id", "provider", "status", "error_code", "latency_ms"}` (`provider`: the
    credential's provider kind, e.g. "openai"). Every attempt after the first also says why it
    happened: `"reason"` is "retry" (the same deployment again) or "fallback" (another one), and
    `"after"` the previous attempt's failure, "timeout", "429" or "5xx" (the SLA policy's retry
    conditions): `{..., "reason": "fallback", "after": "5xx"}`. Events written before issue 15
    have no `provider`, `reason` or `after`, and no `client_ip` or `user_agent` field at all.

    `client_ip` is the caller's address (`client_ip` below), "" when unknown; `user_agent` its
    User-Agent header, cleaned and cut (`user_agent` below)."""

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
    client_ip: str = ""
    user_agent: str = ""
    # Captured prompt and answer, sealed for the org (gateway/capture.py), as base64; "" when
    # the request is not captured. Always the last field: ingestion takes it off the row.
    content: str = ""

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
        fields[b"client_ip"] = self.client_ip.encode("utf-8", "backslashreplace")
        fields[b"user_agent"] = self.user_agent.encode("utf-8", "backslashreplace")
        fields[b"content"] = self.content.encode("ascii", "replace")
        return fields

    def xadd(self, head: bytes) -> bytes:
        """The XADD command appending this event, in RESP, after `head` (see `xadd_head`)."""
        parts = [head]
        for name, value in self.stream_fields().items():
            parts += (_FIELD_NAMES[name], b"$%d\r\n%b\r\n" % (len(value), value))
        return b"".join(parts)


_FIELD_COUNT = 22  # the fields of UsageEvent.stream_fields
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


# What a usage event says about the caller ------------------------------------------------

MAX_USER_AGENT_LENGTH = 200  # the ledger's user_agent column
# C0 and C1 controls (NUL among them), DEL and lone surrogates: kept out of the ledger.
_UNSTORABLE_IN_USER_AGENT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def user_agent(header: str) -> str:
    """The User-Agent header as the ledger keeps it: control characters removed, cut to
    MAX_USER_AGENT_LENGTH characters. ASGI gives headers as Latin-1 (gateway/http.py): UTF-8
    sent in one is read back as UTF-8, undecodable bytes become U+FFFD."""
    if len(header) <= MAX_USER_AGENT_LENGTH and header.isascii() and header.isprintable():
        return header  # what real clients send
    text = header[: 4 * MAX_USER_AGENT_LENGTH]  # bounded work, however long the header
    if not text.isascii():
        with contextlib.suppress(UnicodeEncodeError):  # not Latin-1: already text, not header bytes
            text = text.encode("latin-1").decode("utf-8", "replace")
    return _UNSTORABLE_IN_USER_AGENT.sub("", text)[:MAX_USER_AGENT_LENGTH]


class TrustedProxies:
    """GATEWAY_TRUSTED_PROXIES: the networks of the load balancers whose X-Forwarded-For is
    believed. What each address text means is remembered (up to REMEMBERED texts): the same
    proxies and callers come again and again, and parsing an address costs microseconds."""

    REMEMBERED = 4096
    __slots__ = ("_seen", "networks")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)
        self._seen: dict[str, tuple[str, bool]] = {}

    @classmethod
    def from_text(cls, value: str) -> "TrustedProxies":
        """Comma-separated addresses or CIDR networks; SystemExit naming an entry that is neither."""
        networks = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise SystemExit(f"GATEWAY_TRUSTED_PROXIES: {item!r} is not an IP address or CIDR network.") from None
        return cls(networks)

    def address(self, text: str) -> tuple[str, bool]:
        """A peer or one X-Forwarded-For entry (some proxies add a port: "203.0.113.7:4711",
        "[2001:db8::1]:4711") as (the address, "" when it is none; whether a proxy we trust has it)."""
        seen = self._seen.get(text)
        if seen is None:
            if len(self._seen) >= self.REMEMBERED:
                self._seen.clear()
            seen = self._seen[text] = self._look_at(text)
        return seen

    def _look_at(self, text: str) -> tuple[str, bool]:
        bare = text.strip()
        if bare.startswith("["):
            bare = bare[1:].partition("]")[0]
        elif bare.count(":") == 1:
            bare = bare.partition(":")[0]
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            return "", False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        return str(address), any(address in network for network in self.networks)


def client_ip(scope: Mapping[str, Any], trusted: TrustedProxies) -> str:
    """The caller's address: the connection's peer. When the peer is a trusted proxy, the
    rightmost address of X-Forwarded-For (all its header lines, in order) that no trusted proxy
    has: the entries right of it were appended by proxies we trust, anything left of it the
    caller could have written. When every entry is trusted, the leftmost; "" when the entry
    that should be the caller's is not an address (e.g. "unknown")."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if not trusted.networks or not trusted.address(peer)[1]:
        return peer  # without trusted proxies, the only work every request does
    hops = [
        hop.decode("latin-1")
        for name, value in scope["headers"]
        if name == b"x-forwarded-for"
        for hop in value.split(b",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        address, is_trusted = trusted.address(hop)
        if not is_trusted:
            return address
    return trusted.address(hops[0])[0] if hops else peer


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

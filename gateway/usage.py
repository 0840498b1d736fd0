"""Usage events: one per request, appended to a Redis stream the control plane ingests."""

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import redis.asyncio as redis

from .redis_keys import RedisKeys

log = logging.getLogger("gateway.usage")
STREAM_MAX_LENGTH = 1_000_000  # approximate trim; ingestion keeps far ahead of this


@dataclass
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
    attempts: list = field(default_factory=list)


class UsageSink:
    """Buffers usage events and appends them to the stream in one pipelined round trip every
    FLUSH_SECONDS (or sooner when BATCH_SIZE wait), instead of one round trip per request.
    A worker killed without warning loses at most the last FLUSH_SECONDS of events."""

    FLUSH_SECONDS = 0.01
    BATCH_SIZE = 500

    def __init__(self, client: redis.Redis, keys: RedisKeys, node_id: str):
        self.client, self.stream, self.node_id = client, keys.usage_stream, node_id
        self.buffer: list[dict[str, str]] = []
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def emit(self, event: UsageEvent) -> None:
        event.node_id, event.ts = self.node_id, event.ts or time.time()
        fields = {name: str(value) for name, value in asdict(event).items()}
        fields["attempts"] = json.dumps(event.attempts)
        self.buffer.append(fields)
        if len(self.buffer) >= self.BATCH_SIZE:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.FLUSH_SECONDS)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for fields in batch:
                    pipe.xadd(self.stream, fields, maxlen=STREAM_MAX_LENGTH, approximate=True)
                await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            # Kept for the next flush, bounded so a long Redis outage cannot exhaust memory.
            self.buffer = (batch + self.buffer)[-100_000:]
            self.dropped += max(0, len(batch) + len(self.buffer) - 100_000)
            log.warning("usage events not recorded yet (%d buffered): %s", len(self.buffer), error)

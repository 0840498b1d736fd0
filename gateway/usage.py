"""Usage events: one per request, appended to a Redis stream the control plane ingests."""

import logging
import time
from dataclasses import asdict, dataclass

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


class UsageSink:
    def __init__(self, client: redis.Redis, keys: RedisKeys, node_id: str):
        self.client, self.stream, self.node_id = client, keys.usage_stream, node_id
        self.dropped = 0

    async def emit(self, event: UsageEvent) -> None:
        event.node_id, event.ts = self.node_id, event.ts or time.time()
        fields = {name: str(value) for name, value in asdict(event).items()}
        try:
            await self.client.xadd(self.stream, fields, maxlen=STREAM_MAX_LENGTH, approximate=True)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self.dropped += 1
            log.warning("usage event %s not recorded: %s", event.request_id, error)

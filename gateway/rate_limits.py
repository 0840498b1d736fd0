"""RPM and TPM limits per caller key, shared by every worker through Redis.

Fixed one-minute windows keyed by the minute number, so no reset job is needed and every
worker counts in the same place. The admission check and the request count are one Lua
call (one round trip); tokens are added when the answer is complete.
"""

import time

import redis.asyncio as redis

from .errors import GatewayError
from .redis_keys import RedisKeys

ADMIT_SCRIPT = """
local rpm_limit, tpm_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm_limit > 0 then
    local used = tonumber(redis.call('GET', KEYS[2]) or '0')
    if used >= tpm_limit then return -2 end
end
if rpm_limit > 0 then
    local count = redis.call('INCR', KEYS[1])
    if count == 1 then redis.call('EXPIRE', KEYS[1], 120) end
    if count > rpm_limit then return -1 end
end
return 1
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, keys: RedisKeys):
        self.client, self.keys = client, keys
        self.admit_script = client.register_script(ADMIT_SCRIPT)

    async def admit(self, key_id: str, rpm_limit: int | None, tpm_limit: int | None) -> int:
        """The current minute if admitted; GatewayError 429 with Retry-After if not."""
        now = time.time()
        minute = int(now // 60)
        if not rpm_limit and not tpm_limit:
            return minute
        result = await self.admit_script(
            keys=[self.keys.rate_window(key_id, "rpm", minute), self.keys.rate_window(key_id, "tpm", minute)],
            args=[rpm_limit or 0, tpm_limit or 0],
        )
        if result < 0:
            retry_after = max(1, int(60 - now % 60) + 1)
            which = "requests" if result == -1 else "tokens"
            raise GatewayError(
                429,
                "rate_limit_exceeded",
                f"This key's {which}-per-minute limit is reached. Retry after {retry_after} seconds.",
                {"Retry-After": str(retry_after)},
            )
        return minute

    async def add_tokens(self, key_id: str, minute: int, tokens: int, tpm_limit: int | None) -> None:
        if not tpm_limit or tokens <= 0:
            return
        name = self.keys.rate_window(key_id, "tpm", minute)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.incrby(name, tokens)
            pipe.expire(name, 120)
            await pipe.execute()

"""RPM and TPM limits per caller key, shared by every worker through Redis.

Fixed one-minute windows keyed by the minute number, so no reset job is needed and every
worker counts in the same place. The admission check and the request count run inside the
admission script (gateway/budgets.py ADMIT), one round trip with the budget reservation;
tokens are added here when the answer is complete.
"""

from .errors import GatewayError
from .redis_cluster_pipe import Pipe
from .redis_keys import RedisKeys


def rate_limited(which: str, moment: float) -> GatewayError:
    """429 for the requests or tokens window, with Retry-After to the next minute."""
    retry_after = max(1, int(60 - moment % 60) + 1)
    return GatewayError(
        429,
        "rate_limit_exceeded",
        f"This key's {which}-per-minute limit is reached. Retry after {retry_after} seconds.",
        {"Retry-After": str(retry_after)},
    )


class TokenCounter:
    def __init__(self, client: Pipe, keys: RedisKeys):
        self.client, self.keys = client, keys

    async def add_tokens(self, org_id: str, key_id: str, minute: int, tokens: int, tpm_limit: int | None) -> None:
        if not tpm_limit or tokens <= 0:
            return
        name = self.keys.rate_window(org_id, key_id, "tpm", minute)
        await self.client.call_many([("INCRBY", name, tokens), ("EXPIRE", name, 120)])

"""Every Redis key and channel shared by the control plane and the gateway workers.

On a Redis Cluster (`cluster=True`, from a redis+cluster:// URL) each name carries a hash tag,
the part in braces, so that the keys one script or transaction touches share a slot: the
config keys `{config}`, the fleet's `{fleet}`, the usage stream `{usage}`, and everything of
one org's requests (rate windows, budget counters, holds) the org's id. On one server or
behind Sentinel the names are the same without the braces, and the org's id is not in them.
"""

from dataclasses import dataclass

from .redis_url import parse_redis_url


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "gatehouse"
    cluster: bool = False

    @classmethod
    def for_url(cls, prefix: str, url: str) -> "RedisKeys":
        """The names to use on the Redis at `url`."""
        return cls(prefix, cluster=parse_redis_url(url).mode == "cluster")

    def _group(self, name: str) -> str:
        return f"{self.prefix}:{{{name}}}" if self.cluster else f"{self.prefix}:{name}"

    @property
    def latest(self) -> str:
        """The newest revision number Redis holds."""
        return f"{self._group('config')}:latest"

    @property
    def snapshot(self) -> str:
        """The signed envelope of the newest full snapshot."""
        return f"{self._group('config')}:snapshot"

    @property
    def snapshot_revision(self) -> str:
        """The revision whose content the snapshot holds; written in the same step as it."""
        return f"{self._group('config')}:snapshot-revision"

    @property
    def change_log(self) -> str:
        """Sorted set of signed delta envelopes, scored by revision number."""
        return f"{self._group('config')}:log"

    @property
    def revisions_channel(self) -> str:
        """Pub/sub channel: each message is only "revision N exists"."""
        return f"{self.prefix}:config:revisions"

    @property
    def nodes(self) -> str:
        """Sorted set of worker ids scored by their last heartbeat (Unix seconds)."""
        return f"{self._group('fleet')}:nodes"

    def node(self, node_id: str) -> str:
        """Hash of one worker's heartbeat."""
        return f"{self._group('fleet')}:node:{node_id}"

    @property
    def usage_stream(self) -> str:
        return self._group("usage")

    def _org(self, org_id: str) -> str:
        """The start of the keys of one org's requests: on a Cluster, one slot per org."""
        return f"{self.prefix}:{{{org_id}}}:" if self.cluster else f"{self.prefix}:"

    def budget(self, org_id: str, budget_id: str, period_label: str) -> str:
        """A budget's counters for one period (`spent`, `held`)."""
        return f"{self.budget_prefix(org_id)}{budget_id}:{period_label}"

    def budget_prefix(self, org_id: str) -> str:
        """What a budget hold's references are appended to (gateway/budgets.py)."""
        return f"{self._org(org_id)}budget:"

    def budget_holds(self, org_id: str) -> str:
        """Sorted set of the open budget holds of one org's requests, scored by expiry."""
        return f"{self._org(org_id)}holds:{org_id}" if not self.cluster else f"{self._org(org_id)}holds"

    def rate_window(self, org_id: str, key_id: str, kind: str, minute: int) -> str:
        return f"{self._org(org_id)}rate:{kind}:{key_id}:{minute}"

"""Every Redis key and channel shared by the control plane and the gateway workers."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "gatehouse"

    @property
    def latest(self) -> str:
        """The newest revision number Redis holds."""
        return f"{self.prefix}:config:latest"

    @property
    def snapshot(self) -> str:
        """The signed envelope of the newest full snapshot."""
        return f"{self.prefix}:config:snapshot"

    @property
    def snapshot_revision(self) -> str:
        """The revision whose content the snapshot holds; written in the same step as it."""
        return f"{self.prefix}:config:snapshot-revision"

    @property
    def change_log(self) -> str:
        """Sorted set of signed delta envelopes, scored by revision number."""
        return f"{self.prefix}:config:log"

    @property
    def revisions_channel(self) -> str:
        """Pub/sub channel: each message is only "revision N exists"."""
        return f"{self.prefix}:config:revisions"

    @property
    def nodes(self) -> str:
        """Sorted set of worker ids scored by their last heartbeat (Unix seconds)."""
        return f"{self.prefix}:fleet:nodes"

    def node(self, node_id: str) -> str:
        """Hash of one worker's heartbeat."""
        return f"{self.prefix}:fleet:node:{node_id}"

    @property
    def usage_stream(self) -> str:
        return f"{self.prefix}:usage"

    def budget(self, budget_id: str, period_label: str) -> str:
        """A budget's counters for one period (`spent`, `held`)."""
        return f"{self.budget_prefix}{budget_id}:{period_label}"

    @property
    def budget_prefix(self) -> str:
        return f"{self.prefix}:budget:"

    def budget_holds(self, org_id: str) -> str:
        """Sorted set of the open budget holds of one org's requests, scored by expiry."""
        return f"{self.prefix}:holds:{org_id}"

    def rate_window(self, key_id: str, kind: str, minute: int) -> str:
        return f"{self.prefix}:rate:{kind}:{key_id}:{minute}"

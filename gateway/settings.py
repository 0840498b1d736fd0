"""The worker's settings, from the environment (documented in the README and .env.example)."""

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEVELOPMENT_GATEWAY_KEY, DEVELOPMENT_SIGNING_KEY, public_key_text, signing_key_from_text
from .http import allowed_origins
from .usage import TrustedProxies


def _secret(name: str) -> str:
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, "")


@dataclass(frozen=True)
class GatewaySettings:
    redis_url: str
    redis_prefix: str
    signing_public_key: str
    gateway_key: str
    node_id: str
    state_dir: Path
    poll_seconds: float
    heartbeat_seconds: float
    upstream_timeout_seconds: float
    max_body_bytes: int
    body_timeout_seconds: float = 20.0
    # With no copy on disk, a worker refuses to start from a config signed longer ago than this
    # (gateway/follower.py); well above the control plane's GATEHOUSE_SNAPSHOT_REFRESH_SECONDS.
    max_snapshot_age_seconds: float = 86_400.0
    # Replicas that must hold each write (admission, settle, usage) before it counts: 0 on one
    # server; 1 behind Sentinel, so that a failover loses no acknowledged write (gateway/redis_pipe.py).
    redis_min_replicas: int = 0
    redis_replica_timeout_ms: int = 100
    # Load balancers and proxies whose X-Forwarded-For is believed (gateway/usage.py client_ip).
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    # Browser origins allowed to call /v1/ (gateway/http.py CORS): the portal, for its playground.
    cors_origins: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls) -> "GatewaySettings":
        development = os.environ.get("GATEHOUSE_DEVELOPMENT_KEYS", "") in {"1", "true", "yes"}
        public_key = _secret("GATEHOUSE_SIGNING_PUBLIC_KEY")
        gateway_key = _secret("GATEHOUSE_GATEWAY_KEY")
        if development:
            public_key = public_key or public_key_text(signing_key_from_text(DEVELOPMENT_SIGNING_KEY))
            gateway_key = gateway_key or DEVELOPMENT_GATEWAY_KEY
        if not public_key or not gateway_key:
            raise SystemExit(
                "GATEHOUSE_SIGNING_PUBLIC_KEY and GATEHOUSE_GATEWAY_KEY must be set "
                "(or GATEHOUSE_DEVELOPMENT_KEYS=1 for the published development keys)."
            )
        node_id = node_id_from_env()
        return cls(
            redis_url=_secret("REDIS_URL") or "redis://127.0.0.1:6379/0",
            redis_prefix=os.environ.get("GATEHOUSE_REDIS_PREFIX", "gatehouse"),
            signing_public_key=public_key,
            gateway_key=gateway_key,
            node_id=node_id,
            state_dir=Path(os.environ.get("GATEWAY_STATE_DIR", "var/gateway")) / node_id,
            poll_seconds=float(os.environ.get("GATEWAY_POLL_SECONDS", "2")),
            heartbeat_seconds=float(os.environ.get("GATEWAY_HEARTBEAT_SECONDS", "5")),
            upstream_timeout_seconds=float(os.environ.get("GATEWAY_UPSTREAM_TIMEOUT_SECONDS", "120")),
            max_body_bytes=int(os.environ.get("GATEWAY_MAX_BODY_BYTES", str(4 * 1024 * 1024))),
            body_timeout_seconds=float(os.environ.get("GATEWAY_BODY_TIMEOUT_SECONDS", "20")),
            max_snapshot_age_seconds=float(os.environ.get("GATEWAY_MAX_SNAPSHOT_AGE_SECONDS", "86400")),
            redis_min_replicas=int(os.environ.get("GATEWAY_REDIS_MIN_REPLICAS", "0")),
            redis_replica_timeout_ms=int(os.environ.get("GATEWAY_REDIS_REPLICA_TIMEOUT_MS", "100")),
            trusted_proxies=TrustedProxies.from_text(os.environ.get("GATEWAY_TRUSTED_PROXIES", "")),
            cors_origins=allowed_origins(os.environ.get("GATEWAY_CORS_ORIGINS", "")),
        )


def base_node_id() -> str:
    """GATEWAY_NODE_ID, or the host name and a random suffix."""
    return os.environ.get("GATEWAY_NODE_ID") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def node_id_from_env() -> str:
    """The base node id; a process started by `--workers N` adds its number, so each has its
    own heartbeat and state folder (the supervisor fixes the base before it starts them)."""
    node_id = base_node_id()
    index = os.environ.get("GATEWAY_WORKER_INDEX")
    return f"{node_id}-{index}" if index else node_id

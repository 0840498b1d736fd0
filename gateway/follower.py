"""Follows config revisions: subscribe for "revision N exists", poll as a fallback, pull what
is missing, verify it completely, build it aside, swap one reference, save it to disk.

A rejected revision (signature, schema, order) never replaces the config in use; it is
remembered and reported in the heartbeat. With Redis unreachable at start, the last good
config on disk serves until Redis returns.
"""

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

import orjson
import redis.asyncio as redis

from .config import (
    ConfigError,
    GatewayConfig,
    config_from_delta,
    config_from_full,
    decode_raw_key,
    envelope_payload,
    open_envelope,
    verify_key_from_text,
)
from .redis_keys import RedisKeys
from .settings import GatewaySettings

log = logging.getLogger("gateway.follower")


class ConfigFollower:
    def __init__(self, settings: GatewaySettings, client: redis.Redis):
        self.settings = settings
        self.client = client
        self.keys = RedisKeys(settings.redis_prefix)
        self.public_key = verify_key_from_text(settings.signing_public_key)
        self.gateway_key = decode_raw_key(settings.gateway_key, "GATEHOUSE_GATEWAY_KEY")
        self.config: GatewayConfig | None = None
        # Envelopes that rebuild the current config: the snapshot, then the deltas after it.
        self.envelopes: list[bytes] = []
        self.last_error = ""
        self.last_rejected = ""
        self.started_at = time.time()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        # More heartbeat fields from the worker (its circuit breakers).
        self.extra_heartbeat = lambda: {}

    @property
    def disk_path(self) -> Path:
        return self.settings.state_dir / "config.envelopes"

    # Loading -----------------------------------------------------------------------------

    def _reject(self, revision, error: Exception) -> None:
        self.last_rejected = f"revision {revision}: {error}"
        self.last_error = self.last_rejected
        log.warning("rejected config %s", self.last_rejected)

    def _apply_snapshot(self, envelope: bytes) -> bool:
        try:
            document, payload = open_envelope(self.public_key, envelope)
            if self.config is not None and document.get("revision", -1) < self.config.revision:
                raise ConfigError(f"older than the running revision {self.config.revision}")
            config = config_from_full(document, payload, self.gateway_key)
        except ConfigError as error:
            self._reject("snapshot", error)
            return False
        self.config, self.envelopes = config, [envelope]
        return True

    def _apply_delta(self, envelope: bytes) -> bool:
        assert self.config is not None  # noqa: S101
        try:
            document, payload = open_envelope(self.public_key, envelope)
            config = config_from_delta(self.config, document, payload, self.gateway_key)
        except ConfigError as error:
            self._reject(f"delta after {self.config.revision}", error)
            return False
        self.config = config
        self.envelopes.append(envelope)
        return True

    async def catch_up(self) -> None:
        """Bring the config up to Redis' newest revision."""
        async with self._lock:
            before = self.config.revision if self.config else None
            latest = int(await self.client.get(self.keys.latest) or 0)
            if self.config is not None and latest <= self.config.revision:
                self.last_error = "" if not self.last_rejected else self.last_error
                return
            if self.config is not None:
                deltas = await self.client.zrangebyscore(self.keys.change_log, self.config.revision + 1, "+inf")
                if deltas and self._chains(deltas[0]):
                    for envelope in deltas:
                        if not self._apply_delta(envelope):
                            break
            if self.config is None or self.config.revision < latest:
                snapshot = await self.client.get(self.keys.snapshot)
                if snapshot and self._apply_snapshot(snapshot):
                    deltas = await self.client.zrangebyscore(self.keys.change_log, self.config.revision + 1, "+inf")
                    for envelope in deltas:
                        if not self._apply_delta(envelope):
                            break
            if self.config is not None and self.config.revision != before:
                self.last_error = ""
                self.save_to_disk()
                log.info("config revision %s", self.config.revision)

    def _chains(self, envelope: bytes) -> bool:
        """Whether the first pending delta applies to our revision (else reload the snapshot)."""
        try:
            return orjson.loads(envelope_payload(envelope)).get("base_revision") == self.config.revision
        except (ConfigError, orjson.JSONDecodeError, AttributeError):
            return False

    # Disk --------------------------------------------------------------------------------

    def save_to_disk(self) -> None:
        """Write the envelopes atomically: a crash leaves the old file or the new one."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.disk_path.with_suffix(".tmp")
        # Envelopes separated by NUL: JSON never contains a raw NUL byte.
        with open(temporary, "wb") as handle:
            handle.write(b"\0".join(self.envelopes))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.disk_path)

    def load_from_disk(self) -> bool:
        try:
            envelopes = self.disk_path.read_bytes().split(b"\0")
        except OSError:
            return False
        if not envelopes or not self._apply_snapshot(envelopes[0]):
            return False
        for envelope in envelopes[1:]:
            if not self._apply_delta(envelope):
                break
        log.info("serving config revision %s from disk", self.config.revision if self.config else None)
        return self.config is not None

    # Running -----------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.catch_up()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self.last_error = f"redis unreachable at start: {error}"
            self.load_from_disk()
        self._tasks = [
            asyncio.create_task(self._subscribe()),
            asyncio.create_task(self._poll()),
            asyncio.create_task(self._heartbeat()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _safe_catch_up(self) -> None:
        try:
            await self.catch_up()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self.last_error = f"redis unreachable: {error}"

    async def _subscribe(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.keys.revisions_channel)
                await self._safe_catch_up()  # anything announced while we were not listening
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._safe_catch_up()
            except asyncio.CancelledError:
                raise
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                self.last_error = f"redis unreachable: {error}"
                await asyncio.sleep(1)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            await self._safe_catch_up()

    def heartbeat_fields(self) -> dict[str, str]:
        return {
            "node_id": self.settings.node_id,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "revision": str(self.config.revision if self.config else ""),
            "config_hash": self.config.hash if self.config else "",
            "last_error": self.last_error[:500],
            "last_rejected": self.last_rejected[:500],
            "started_at": f"{self.started_at:.3f}",
            "heartbeat_at": f"{time.time():.3f}",
            **self.extra_heartbeat(),
        }

    async def send_heartbeat(self) -> None:
        fields = self.heartbeat_fields()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.node(self.settings.node_id), mapping=fields)
            pipe.expire(self.keys.node(self.settings.node_id), 3600)
            pipe.zadd(self.keys.nodes, {self.settings.node_id: float(fields["heartbeat_at"])})
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.send_heartbeat()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                self.last_error = f"redis unreachable: {error}"
            await asyncio.sleep(self.settings.heartbeat_seconds)

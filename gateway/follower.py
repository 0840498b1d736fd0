"""Follows config revisions: subscribe for "revision N exists", poll as a fallback, pull what
is missing, verify it completely, build it aside, swap one reference, save it to disk.

Verifying and building run on a thread (asyncio.to_thread), never on the event loop: a full
snapshot of 100,000 keys takes a good part of a second to index. A delta touches only what it
changes (gateway/config.py, gateway/layered_map.py), so it costs the same at any size. The
event loop only fetches envelopes and swaps the reference.

A rejected revision (signature, schema, order) never replaces the config in use; it is
remembered and reported in the heartbeat, and while it keeps the worker behind, last_error
(readyz, the fleet page) names it. With Redis unreachable at start, the last good config on
disk (gateway/state_file.py) serves until Redis returns.

Whoever can write to Redis can put back any snapshot and deltas ever signed, so a valid
signature alone does not make a config current. Two rules bound what an old one can do:
- A worker never moves below what it runs, and at start it runs its disk copy: the highest
  revision it has on disk is its floor, whatever Redis' `latest` says or the change log lacks.
- A worker with nothing on disk refuses to start from a config whose newest signature is older
  than GATEWAY_MAX_SNAPSHOT_AGE_SECONDS (see `signed_at` in gateway/config.py); it stays not
  ready, says why, and keeps polling until a fresh one arrives. Once serving, any newer
  signed revision is an improvement on what it serves, so the age applies only to starting.
"""

import asyncio
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import orjson
import redis.asyncio as redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .config import (
    ConfigError,
    GatewayConfig,
    config_from_delta,
    config_from_full,
    decode_raw_key,
    envelope_payload,
    open_envelope,
    peek_signed_at,
    verify_envelope,
    verify_key_from_text,
    verify_signature,
)
from .redis_keys import RedisKeys
from .settings import GatewaySettings
from .state_file import StateFile

log = logging.getLogger("gateway.follower")

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
# Past this many deltas on disk, the state file restarts from Redis' newer snapshot (written by
# compaction) if it is one of the revisions this worker went through, so a restart replays
# few deltas and the file stays small.
REBASE_AFTER_DELTAS = 256
REBASE_PIECE_BYTES = 1 << 20  # the snapshot is copied from Redis this much at a time
# While config is built on a thread (a snapshot indexed, deltas applied, a signature checked),
# the event loop waits for the GIL at most this long each time it wakes; the default, 5 ms, held
# requests up to 5 ms at each of 100 one-key deltas (bench section 10). Set for the whole
# process when the follower starts.
BUILD_SWITCH_INTERVAL = 0.0005


@contextmanager
def _building_a_snapshot() -> Iterator[None]:
    """Keep the cyclic garbage collector out of the way: a full collection while a 100,000-key
    snapshot is half built holds the GIL for 100 ms and more, and finds nothing to free (the
    config has no reference cycles). The GIL is shared in short slices (BUILD_SWITCH_INTERVAL)."""
    # Collect first: garbage alive now would otherwise be frozen with the new config for good.
    # The running config is frozen already, so this walks only the young objects.
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _exempt_from_garbage_collection() -> None:
    """Move every object alive now, the new config included, out of the collector's sight:
    otherwise each full collection walks the whole key index (over 100 ms at 100,000 keys)
    while requests wait. The config has no reference cycles, so reference counting still
    frees it once a newer one replaces it."""
    gc.freeze()


class ConfigFollower:
    def __init__(self, settings: GatewaySettings, client: "redis.Redis | redis.RedisCluster"):
        self.settings = settings
        self.client = client
        self.keys = RedisKeys.for_url(settings.redis_prefix, settings.redis_url)
        self.public_key = verify_key_from_text(settings.signing_public_key)
        self.gateway_key = decode_raw_key(settings.gateway_key, "GATEHOUSE_GATEWAY_KEY")
        self.config: GatewayConfig | None = None
        # Full snapshots built since start: a compaction must not add to it.
        self.snapshot_loads = 0
        self.state = StateFile(settings.state_dir / "config.envelopes")
        # The deltas the state file holds after its snapshot: (revision, envelope).
        self._disk_deltas: list[tuple[int, bytes]] = []
        self.last_error = ""
        self.last_rejected = ""
        self.rejections = 0  # configs refused since start
        self.started_at = time.time()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # More heartbeat fields from the worker (its circuit breakers).
        self.extra_heartbeat: Callable[[], dict[str, str]] = lambda: {}

    # Building (on a thread) ----------------------------------------------------------------

    def _reject(self, what: str, error: Exception) -> None:
        message = f"{what}: {error}"
        if message != self.last_rejected:  # a poll finding the same one again is not news
            log.warning("rejected config %s", message)
        self.rejections += 1
        self.last_rejected = self.last_error = message

    def _build_snapshot(self, envelope: bytes, running: GatewayConfig | None) -> GatewayConfig:
        with _building_a_snapshot():
            document, payload = open_envelope(self.public_key, envelope)
            revision = document.get("revision", -1)
            if running is not None and isinstance(revision, int) and revision < running.revision:
                raise ConfigError(f"older than the running revision {running.revision}")
            return config_from_full(document, payload, self.gateway_key)

    def _build_deltas(
        self, envelopes: list[bytes], config: GatewayConfig
    ) -> tuple[GatewayConfig, list[tuple[int, bytes]], ConfigError | None]:
        """Apply deltas in order until one fails: (newest good config, the (revision, envelope)
        of each delta applied, the error)."""
        applied: list[tuple[int, bytes]] = []
        for envelope in envelopes:
            try:
                document, payload = open_envelope(self.public_key, envelope)
                config = config_from_delta(config, document, payload, self.gateway_key)
            except ConfigError as error:
                return config, applied, error
            applied.append((config.revision, envelope))
        return config, applied, None

    # Freshness (only for a worker serving nothing yet) ---------------------------------------

    def _too_old(self, signed_at: int) -> bool:
        return time.time() - signed_at > self.settings.max_snapshot_age_seconds

    def _refuse_stale(self, revision: object, signed_at: int) -> None:
        limit = f"GATEWAY_MAX_SNAPSHOT_AGE_SECONDS ({self.settings.max_snapshot_age_seconds:g} s)"
        if signed_at:
            signed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(signed_at))
            why = f"signed at {signed}, longer ago than {limit} allows"
        else:
            why = f"it carries no signing time (signed before an upgrade), so it may be older than {limit}"
        self._reject(
            f"revision {revision}",
            ConfigError(
                f"not serving it: {why}, and this worker has no config on disk to start from; "
                "waiting for a fresher one (compaction re-signs the newest snapshot)"
            ),
        )

    async def _refused_before_building(self, snapshot: bytes) -> bool:
        """Whether Redis' snapshot is refused already for its signature, or because it and
        every delta after it were signed too long ago: then the 30 MB are not parsed and
        indexed for nothing, every poll until a fresh one arrives. The deltas' times are read
        without verifying them, so what is built is checked again (_load_snapshot)."""
        try:
            payload = await asyncio.to_thread(verify_envelope, self.public_key, snapshot)
        except ConfigError as error:
            self._reject(_claimed(snapshot, "snapshot"), error)
            return True
        revision = signed_revision(payload)
        deltas = await self._deltas_after(revision) if revision is not None else []
        newest = max(peek_signed_at(envelope[-64:]) for envelope in [payload, *deltas])
        if self._too_old(newest):
            self._refuse_stale(revision if revision is not None else "?", newest)
            return True
        return False

    # Applying (on the loop: swap the reference, queue the disk write) ----------------------

    def _install(self, config: GatewayConfig) -> None:
        self.config = config
        self.snapshot_loads += 1
        _exempt_from_garbage_collection()

    async def _load_snapshot(self, envelope: bytes) -> bool:
        """Build Redis' snapshot and the deltas after it aside; swap them in and write them to
        disk unless they do not verify, are older than the running revision or, for a worker
        serving nothing yet, were signed too long ago."""
        starting = self.config is None
        if starting and await self._refused_before_building(envelope):
            return False
        try:
            config = await asyncio.to_thread(self._build_snapshot, envelope, self.config)
        except ConfigError as refused:
            self._reject(_claimed(envelope, "snapshot"), refused)
            return False
        deltas = await self._deltas_after(config.revision)
        config, applied, error = await asyncio.to_thread(self._build_deltas, deltas, config)
        if starting and self._too_old(config.signed_at):
            self._refuse_stale(config.revision, config.signed_at)
            return False
        self._install(config)
        self.state.replace([envelope, *(delta for _, delta in applied)])
        self._disk_deltas = applied
        if error is not None:
            self._reject(_claimed(deltas[len(applied)], "delta"), error)
        return True

    async def _apply_deltas(self, envelopes: list[bytes]) -> None:
        if not envelopes or self.config is None:
            return
        config, applied, error = await asyncio.to_thread(self._build_deltas, envelopes, self.config)
        self.config = config
        if error is not None:
            self._reject(_claimed(envelopes[len(applied)], "delta"), error)
        for _, envelope in applied:
            self.state.append(envelope)
        self._disk_deltas += applied

    async def catch_up(self) -> None:
        """Bring the config up to Redis' newest revision."""
        async with self._lock:
            before, rejections = self.config, self.rejections
            latest = int(await self.client.get(self.keys.latest) or 0)
            if self.config is not None and latest <= self.config.revision:
                # Never below: a `latest` put back lower (or a change log cut short) is no
                # reason to load anything, so the revision on disk is a floor.
                self.last_error = "" if not self.last_rejected else self.last_error
                return
            if self.config is not None:
                deltas = await self._deltas_after(self.config.revision)
                if deltas and self._chains(deltas[0]):
                    await self._apply_deltas(deltas)
            if self.config is not None and self.config.revision < latest:
                # A snapshot this worker already runs past would only be rebuilt for nothing
                # (every poll, until the next compaction): wait for a newer one instead.
                held = await self.client.get(self.keys.snapshot_revision)
                if held is not None and int(held) <= self.config.revision:
                    self.last_error = (
                        # The next revision is there but was refused: say why, not that it is missing.
                        f"{self.last_rejected} (staying at revision {self.config.revision} until a snapshot past it)"
                        if self.rejections > rejections
                        else f"revision {self.config.revision + 1} is neither in the change log nor in a snapshot yet"
                    )
                    return
            if self.config is None or self.config.revision < latest:
                snapshot = cast(bytes | None, await self.client.get(self.keys.snapshot))
                if snapshot:
                    await self._load_snapshot(snapshot)
            if self.config is not None and self.config is not before:
                if self.rejections == rejections:
                    self.last_error = ""
                log.info("config revision %s", self.config.revision)
            if len(self._disk_deltas) >= REBASE_AFTER_DELTAS:
                await self._rebase_state_file()

    async def _deltas_after(self, revision: int) -> list[bytes]:
        return cast(list[bytes], await self.client.zrangebyscore(self.keys.change_log, revision + 1, "+inf"))

    def _chains(self, envelope: bytes) -> bool:
        """Whether the first pending delta applies to our revision (else reload the snapshot)."""
        try:
            document = orjson.loads(envelope_payload(envelope))
        except (ConfigError, orjson.JSONDecodeError):
            return False
        return (
            isinstance(document, dict)
            and self.config is not None
            and document.get("base_revision") == self.config.revision
        )

    # Disk --------------------------------------------------------------------------------

    async def _rebase_state_file(self) -> None:
        """Restart the state file from Redis' snapshot when it is a revision this worker went
        through: the snapshot's bytes are copied (after verifying them), never parsed."""
        ours = {revision for revision, _ in self._disk_deltas}
        number = await self.client.get(self.keys.snapshot_revision)
        if number is None or int(number) not in ours:
            return  # compaction has not caught up with this worker's deltas yet
        snapshot = await self._snapshot_in_pieces()
        if not snapshot or await self.client.get(self.keys.snapshot_revision) != number:
            return  # a newer compaction replaced it while it was read: the next catch-up tries again
        try:  # on a thread, the 30 MB read in place: the event loop keeps the GIL in short slices
            signed = await asyncio.to_thread(_verified_revision, self.public_key, snapshot)
        except ConfigError as error:
            log.warning("not rebasing the state file on Redis' snapshot: %s", error)
            return
        revision = int(number)
        if signed != revision:  # the revision key is unsigned: trust the signed one
            log.warning("not rebasing the state file: Redis' snapshot is not revision %s", revision)
            return
        kept = [
            (delta_revision, envelope) for delta_revision, envelope in self._disk_deltas if delta_revision > revision
        ]
        self.state.replace([snapshot, *(envelope for _, envelope in kept)])
        self._disk_deltas = kept

    async def _snapshot_in_pieces(self) -> bytearray | None:
        """Redis' snapshot read REBASE_PIECE_BYTES at a time (GETRANGE) into one buffer: one GET
        of 30 MB held the event loop for the copy of the whole reply, about 20 ms."""
        size = int(await self.client.strlen(self.keys.snapshot))
        if not size:
            return None
        snapshot = bytearray(size)
        for start in range(0, size, REBASE_PIECE_BYTES):
            piece = cast(bytes, await self.client.getrange(self.keys.snapshot, start, start + REBASE_PIECE_BYTES - 1))
            snapshot[start : start + len(piece)] = piece
        return snapshot

    async def load_from_disk(self) -> bool:
        """Serve the last good config from disk; a torn or unverifiable tail is cut off. Its
        age is not checked: this worker wrote it, and it is the floor the worker never goes
        below (catch_up)."""
        records = await asyncio.to_thread(self.state.read)
        if not records:
            return False
        try:
            config = await asyncio.to_thread(self._build_snapshot, records[0][0], None)
        except ConfigError as error:
            self._reject(f"{_claimed(records[0][0], 'snapshot')} on disk", error)
            return False
        deltas = [envelope for envelope, _ in records[1:]]
        config, self._disk_deltas, _ = await asyncio.to_thread(self._build_deltas, deltas, config)
        self._install(config)
        good_end, file_end = records[len(self._disk_deltas)][1], records[-1][1]
        if good_end < file_end:
            log.warning("ignoring the last %s bytes of %s: they do not verify", file_end - good_end, self.state.path)
            self.state.truncate(good_end)
        log.info("serving config revision %s from disk", config.revision)
        return True

    # Running -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the disk copy at once, if it verifies; then Redis brings it up to date, with
        deltas where they chain. Whatever Redis holds (down, an unverifiable snapshot), a good
        disk copy keeps serving, and last_error says why it is not newer."""
        sys.setswitchinterval(BUILD_SWITCH_INTERVAL)
        await self.load_from_disk()
        try:
            await self.catch_up()
        except REDIS_DOWN as error:
            self.last_error = f"redis unreachable at start: {error}"
        except Exception as error:  # an error reply, or a bug: the poll loop tries again
            log.exception("config update failed at start")
            self.last_error = f"config update failed at start: {error}"
        self._tasks = [
            asyncio.create_task(self._subscribe()),
            asyncio.create_task(self._poll()),
            asyncio.create_task(self._heartbeat()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.state.close)

    async def _safe_catch_up(self) -> None:
        """catch_up that never ends the task calling it: following config must go on."""
        try:
            await self.catch_up()
        except REDIS_DOWN as error:
            self.last_error = f"redis unreachable: {error}"
        except Exception as error:  # a Redis error reply, or a bug: reported, and retried next time
            log.exception("config update failed")
            self.last_error = f"config update failed: {error}"

    async def _subscribe(self) -> None:
        while True:
            try:
                if isinstance(self.client, redis.RedisCluster):
                    await self.client.initialize()  # its pub/sub needs the slot table first
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.keys.revisions_channel)
                await self._safe_catch_up()  # anything announced while we were not listening
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._safe_catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # down, an error reply, anything: subscribe again
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
            "snapshot_loads": str(self.snapshot_loads),
            "last_error": self.last_error[:500],
            "last_rejected": self.last_rejected[:500],
            "started_at": f"{self.started_at:.3f}",
            "heartbeat_at": f"{time.time():.3f}",
            **self.extra_heartbeat(),
        }

    async def send_heartbeat(self) -> None:
        fields = self.heartbeat_fields()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.node(self.settings.node_id), mapping=fields)  # type: ignore[arg-type]
            pipe.expire(self.keys.node(self.settings.node_id), 3600)
            pipe.zadd(self.keys.nodes, {self.settings.node_id: float(fields["heartbeat_at"])})
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.send_heartbeat()
            except Exception as error:  # down, read-only after a failover, out of memory
                self.last_error = f"heartbeat failed: {error}"
            await asyncio.sleep(self.settings.heartbeat_seconds)


def _verified_revision(public: Ed25519PublicKey, envelope: bytes | bytearray) -> int | None:
    """The signed revision of a verified snapshot envelope (ConfigError if it does not verify),
    without copying its payload (the header line holds no such marker)."""
    verify_signature(public, envelope)
    return signed_revision(envelope)


def signed_revision(payload: bytes | bytearray) -> int | None:
    """The top-level revision number of a snapshot payload without parsing 30 MB: canonical
    JSON sorts keys, so the top-level "revision" is the last one written."""
    marker = b',"revision":'
    at = payload.rfind(marker)
    if at < 0:
        return None
    digits = payload[at + len(marker) : at + len(marker) + 20].split(b",", 1)[0].split(b"}", 1)[0]
    return int(digits) if digits.isdigit() else None


def _claimed(envelope: bytes, kind: str) -> str:
    """How a refused envelope names itself ("delta 7"), read without verifying it: the
    heartbeat then says which revision was refused, not only why."""
    try:
        if kind == "snapshot":  # 30 MB: peek at the number rather than parse
            revision: object = signed_revision(envelope_payload(envelope))
        else:
            revision = orjson.loads(envelope_payload(envelope)).get("revision")
    except (ConfigError, orjson.JSONDecodeError, AttributeError):
        revision = None
    return f"{kind} {revision}" if isinstance(revision, int) else f"a {kind}"

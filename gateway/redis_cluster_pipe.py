"""The gateway's pipelined Redis connection (gateway/redis_pipe.py) on a Redis Cluster.

One RedisPipe per primary. Each command goes to the primary that serves its key's slot, from a
slot table read with CLUSTER SLOTS. Every key one command, script or batch touches shares a
hash tag (gateway/redis_keys.py), so one slot serves it. A MOVED reply (slots moved, or a
replica took over) re-reads the table and sends the command again; an ASK reply (a slot in
migration) sends it once to the node named, after ASKING. A lost connection fails the command,
as on one server, and the next command re-reads the table first.
"""

import asyncio
import dataclasses
from typing import Any, cast

import redis.asyncio as redis
import redis.exceptions as redis_errors
from redis.crc import key_slot

from .redis_pipe import PipeScript, RedisPipe, Reply, pack
from .redis_url import parse_redis_url

SLOTS = 16384
REDIRECTS = 3  # MOVED replies followed for one command before it fails


def routing_key(args: tuple[bytes | str | int | float, ...]) -> bytes | str | None:
    """The key a command is routed by: EVAL/EVALSHA's first key, else its first argument."""
    name = str(args[0]).upper() if not isinstance(args[0], bytes) else args[0].decode().upper()
    if name in {"EVAL", "EVALSHA"}:
        return args[3] if int(args[2]) > 0 else None  # type: ignore[return-value]
    if name in {"PING", "INFO", "SCRIPT", "CLUSTER"} or len(args) < 2:
        return None
    return args[1]  # type: ignore[return-value]


class ClusterPipe:
    """RedisPipe's interface (`call`, `call_many`, `call_packed`, `script`, `close`) on a Cluster."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        min_replicas: int = 0,
        replica_timeout_ms: int = 100,
    ):
        self.location = parse_redis_url(url)
        self.min_replicas, self.replica_timeout_ms = min_replicas, replica_timeout_ms
        if self.location.mode != "cluster":
            raise ValueError("ClusterPipe needs a redis+cluster:// URL")
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.pipes: dict[tuple[str, int], RedisPipe] = {}
        self.slots: list[tuple[str, int]] = []  # the primary of each slot; empty: read it first
        self._refreshing: asyncio.Future[None] | None = None

    def _pipe(self, address: tuple[str, int]) -> RedisPipe:
        pipe = self.pipes.get(address)
        if pipe is None:
            node = dataclasses.replace(self.location, nodes=(address,))
            pipe = self.pipes[address] = RedisPipe(
                "",
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
                location=node,
                min_replicas=self.min_replicas,
                replica_timeout_ms=self.replica_timeout_ms,
            )
        return pipe

    async def _refresh(self) -> None:
        """Read the slot table, once however many commands ask at the same time."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_slots())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done() and self._refreshing is refreshing:
                self._refreshing = None

    async def _read_slots(self) -> None:
        known = list(dict.fromkeys([*self.pipes, *self.location.nodes]))
        failure: Exception = redis.ConnectionError("no Cluster node answered")
        for address in known:
            try:
                table = await self._pipe(address).call("CLUSTER", "SLOTS")
            except (redis.RedisError, OSError) as error:
                failure = error
                continue
            slots: list[tuple[str, int]] = [("", 0)] * SLOTS
            for start, end, primary, *_replicas in table:
                host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
                slots[int(start) : int(end) + 1] = [(host or address[0], int(primary[1]))] * (int(end) - int(start) + 1)
            self.slots = slots
            return
        raise failure

    async def _route(self, key: bytes | str | None) -> RedisPipe:
        if not self.slots:
            await self._refresh()
        address = self.slots[key_slot(key.encode() if isinstance(key, str) else key)] if key is not None else None
        if address is None or not address[0]:
            address = next(iter(self.pipes), self.location.nodes[0])
        return self._pipe(address)

    async def _with_redirects(self, key: bytes | str | None, send: Any) -> Any:
        """`send(pipe)` on the key's primary, following MOVED and ASK replies."""
        for _ in range(REDIRECTS):
            pipe = await self._route(key)
            try:
                return await send(pipe)
            except redis_errors.MovedError:
                self.slots = []  # read the table again before the next try
            except redis_errors.AskError as ask:
                target = self._pipe((ask.host, int(ask.port)))
                return await send(target, asking=True)
            except (redis.ConnectionError, redis.TimeoutError):
                self.slots = []  # a primary may have failed over: read the table before the next command
                raise
        raise redis_errors.ClusterError(f"too many MOVED replies for {key!r}")

    async def call(self, *args: bytes | str | int | float) -> Reply:
        async def send(pipe: RedisPipe, asking: bool = False) -> Reply:
            if asking:
                return (await pipe.call_many([("ASKING",), args]))[1]
            return await pipe.call(*args)

        return await self._with_redirects(routing_key(args), send)

    async def call_many(self, commands: list[tuple[bytes | str | int | float, ...]]) -> list[Reply]:
        """All commands go where the first one's key is: the caller's keys share a hash tag."""

        async def send(pipe: RedisPipe, asking: bool = False) -> list[Reply]:
            replies = await pipe.call_many([("ASKING",), *commands] if asking else commands)
            return replies[1:] if asking else replies

        return cast(list[Reply], await self._with_redirects(routing_key(commands[0]) if commands else None, send))

    async def call_packed(self, commands: list[bytes], *, key: str = "") -> list[Reply]:
        async def send(pipe: RedisPipe, asking: bool = False) -> list[Reply]:
            replies = await pipe.call_packed([pack(("ASKING",)), *commands] if asking else commands)
            return replies[1:] if asking else replies

        return cast(list[Reply], await self._with_redirects(key or None, send))

    def script(self, source: str) -> PipeScript:
        return PipeScript(self, source)

    async def close(self) -> None:
        for pipe in list(self.pipes.values()):
            await pipe.close()


def open_pipe(
    url: str,
    *,
    timeout: float = 5.0,
    connect_timeout: float = 2.0,
    min_replicas: int = 0,
    replica_timeout_ms: int = 100,
) -> "Pipe":
    """The gateway's pipelined connection for any URL gateway/redis_url.py reads."""
    if parse_redis_url(url).mode == "cluster":
        return ClusterPipe(
            url,
            timeout=timeout,
            connect_timeout=connect_timeout,
            min_replicas=min_replicas,
            replica_timeout_ms=replica_timeout_ms,
        )
    return RedisPipe(
        url,
        timeout=timeout,
        connect_timeout=connect_timeout,
        min_replicas=min_replicas,
        replica_timeout_ms=replica_timeout_ms,
    )


Pipe = RedisPipe | ClusterPipe

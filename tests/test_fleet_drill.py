"""The multi-host drill (issue 13): a fleet on Sentinel-monitored Redis rides out the death of
its Redis primary, of one gateway host and a restart of the control plane, under traffic.

Real processes, each on its own port and data directory: a Redis primary with two replicas and
three Sentinels (tests/plugins/redis_topology.py), two gateway hosts behind HAProxy
(tests/plugins/haproxy.py), and the control plane (config publisher, beat, ingestion), all with
REDIS_URL=redis+sentinel://..., so the Celery broker is behind Sentinel too. The gateways write
with GATEWAY_REDIS_MIN_REPLICAS=1. Three callers send through HAProxy: the main key (its org
has a hard monthly budget, so every request is admitted in Redis), a key whose team has a small
daily budget that runs out during the drill, and a key that is revoked while Redis fails over.

Asserted: client-visible errors only inside the stated windows after the two kills and none
after the control-plane restart; the revoked key refused by every gateway afterwards, a fresh
one included; every answered request in the ledger exactly once (the killed host, started
again on its state folder, sends the events it answered just before the kill); the small
budget reached and never exceeded, in Redis and in the ledger.
"""

import math
import sys
import threading
import time
from collections import Counter
from decimal import Decimal

import httpx
import orjson
import pytest
from django.conf import settings
from django.db.models import Sum

from budgets.models import UsageRecord
from budgets.services import create_budget
from fleet import services
from keys.services import issue_key, revoke_key
from orgs.services import create_team
from tests.plugins.budget_checks import HELLO_COST_MICROS, settled_counters
from tests.plugins.gateway_workers import ROOT
from tests.plugins.waiting import wait_for

sys.path.insert(0, str(ROOT / "scripts"))
from run import celery_beat, celery_worker

pytestmark = pytest.mark.django_db(transaction=True)
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
# The stated windows: client-visible errors are allowed only this long after each kill.
REDIS_FAILOVER_WINDOW_SECONDS = 10.0
# ...or this long after Redis can take replicated writes again, when that takes Sentinel longer
# (see RedisWatch).
REPLICATED_GRACE_SECONDS = 3.0
GATEWAY_KILL_WINDOW_SECONDS = 3.0
SMALL_BUDGET_MICROS = 40_000  # $0.04: about 230 requests, run out a few seconds after the failover


class Caller:
    """Requests through the load balancer, one after another on each of `threads` threads,
    until stopped: (time, status, request id) of every answer, and the time of every error."""

    def __init__(self, url: str, key: str, threads: int, pause: float):
        self.url, self.headers, self.pause = f"{url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}, pause
        self.answers: list[tuple[float, int, str, str]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with httpx.Client(timeout=15) as client:
            while not self.stopping.is_set():
                try:
                    answer = client.post(self.url, json=BODY, headers=self.headers)
                    code = answer.json().get("error", {}).get("code", "") if answer.status_code != 200 else ""
                    self.answers.append(
                        (time.monotonic(), answer.status_code, answer.headers.get("x-request-id", ""), code)
                    )
                except (httpx.HTTPError, ValueError) as error:
                    self.answers.append((time.monotonic(), 0, "", f"{type(error).__name__}: {error}"))
                time.sleep(self.pause)

    def start(self) -> "Caller":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def answered(self) -> set[str]:
        return {request_id for _, status, request_id, _ in self.answers if status == 200}


class RedisWatch:
    """When Redis could not take a write that waits for a replica, sampled every 0.1 s from the
    primary's kill on: the Sentinels name no primary, or it has no replica with its link up.
    The gateways fail closed then, by design (GATEWAY_REDIS_MIN_REPLICAS=1); that part of the
    outage is Sentinel's. On a loaded machine it can last longer than the first failover: a
    promoted replica that answers Sentinel's PING late (DOWN_AFTER_MILLISECONDS) is failed over
    again, and the other replica follows the newest primary only at Sentinel's next INFO round
    (every 10 s). CI saw exactly that: two failovers, and 10 s without a replica after the second."""

    def __init__(self, topology):
        self.topology, self.stopping = topology, threading.Event()
        self.unhealthy_until = 0.0  # the last sample that found Redis unable to take replicated writes
        self.primaries: list[tuple] = []  # every primary the Sentinels named, in order
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            moment = time.monotonic()
            if not self.topology.replicated_now():
                self.unhealthy_until = moment
            answers = self.topology.master_addresses()
            if answers and (not self.primaries or self.primaries[-1] != answers[0]):
                self.primaries.append(answers[0])
            time.sleep(0.1)

    def start(self) -> "RedisWatch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


@pytest.fixture
def on_sentinel(sentinel_topology, use_redis):
    return use_redis(sentinel_topology.url)


def test_the_fleet_rides_out_a_redis_failover_a_dead_gateway_host_and_a_control_plane_restart(
    on_sentinel,
    sentinel_topology,
    served,
    actors,
    org,
    gateway_workers,
    haproxy_factory,
    control_plane_process,
    report,
):
    admin = actors["admin"]
    create_budget(actor=actors["finance"], org=org, name="Org", scope="org", amount=Decimal("1000"), period="monthly")
    small_team = create_team(actor=admin, org=org, name="Small")
    small = create_budget(
        actor=actors["finance"],
        org=org,
        name="Small daily",
        scope="team",
        team=small_team,
        amount=Decimal(SMALL_BUDGET_MICROS) / 1_000_000,
        period="daily",
    )
    _small_key, small_plaintext = issue_key(actor=admin, team=small_team, name="small")
    doomed, doomed_plaintext = issue_key(actor=admin, team=served["team"], name="revoked in the failover")
    services.publish_pending()

    env = {"GATEHOUSE_PUBLISH_SWEEP_SECONDS": "1"}
    commands = {
        "ingest": ["manage.py", "ingest_usage", "--consumer", "drill"],
        "publisher": celery_worker(settings.GATEHOUSE_PUBLISH_QUEUE, 1, "publisher"),
        "beat": celery_beat(),
    }
    control_plane = {name: control_plane_process(name, argv, **env) for name, argv in commands.items()}
    gateway_env = {"GATEWAY_REDIS_MIN_REPLICAS": "1", "GATEWAY_REDIS_REPLICA_TIMEOUT_MS": "1000"}
    hosts = gateway_workers(2, **gateway_env)
    proxy = haproxy_factory([("127.0.0.1", host.port) for host in hosts], retry_on="conn-failure")

    def logs() -> str:
        parts = [f"{name}:\n{log.read_text()[-2000:]}" for name, (_, log) in control_plane.items()]
        gateways = [f"{host.node_id}:\n{host.log()[-2000:]}" for host in hosts]
        return "\n".join([*parts, *gateways, sentinel_topology.logs()])  # Redis's own view of the failover

    def refused_everywhere(urls: list[str]) -> bool:
        headers = {"Authorization": f"Bearer {doomed_plaintext}"}
        statuses = [httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=headers).status_code for url in urls]
        return statuses == [401] * len(urls)

    main = Caller(proxy.url, served["plaintext"], threads=3, pause=0.02).start()
    budgeted = Caller(proxy.url, small_plaintext, threads=1, pause=0.04).start()
    try:
        time.sleep(3)
        _old, redis_killed_at = sentinel_topology.kill_master()
        watch = RedisWatch(sentinel_topology).start()
        revoke_key(actor=admin, key=doomed)  # committed while Redis has no primary
        failover = sentinel_topology.wait_for_failover(_old.address, timeout=15)
        # Writes wait for one replica (GATEWAY_REDIS_MIN_REPLICAS=1): until the surviving replica
        # follows the new primary they fail closed, by design. That is Sentinel's step, not ours.
        replicated = sentinel_topology.wait_for_replicated_primary(timeout=30)
        time.sleep(3)
        gateway_killed_at = time.monotonic()
        hosts[0].process.kill()
        time.sleep(4)
        control_plane_restarted_at = time.monotonic()
        for name, (process, _log) in control_plane.items():
            process.terminate()
            process.wait(timeout=30)
            control_plane[name] = control_plane_process(name, commands[name], **env)
        time.sleep(4)
        hosts[0].start(**gateway_env)  # the host comes back: it sends the usage its state folder kept
        time.sleep(2)
    finally:
        main.stop()
        budgeted.stop()
    watch.stop()
    unhealthy = max(watch.unhealthy_until - redis_killed_at, replicated)

    # Errors: only inside the stated windows, none after the control plane's restart.
    windows = {  # an error in both is put down to the later event
        "gateway host killed": (gateway_killed_at, gateway_killed_at + GATEWAY_KILL_WINDOW_SECONDS),
        "redis failover": (
            redis_killed_at,
            redis_killed_at + max(REDIS_FAILOVER_WINDOW_SECONDS, unhealthy + REPLICATED_GRACE_SECONDS),
        ),
    }
    expected = {200, 402}  # 402: the small budget ran out, as it should
    errors = [
        (moment, status, code) for moment, status, _, code in main.answers + budgeted.answers if status not in expected
    ]
    by_window = Counter(
        next((name for name, (start, end) in windows.items() if start <= moment <= end), "outside any window")
        for moment, _, _ in errors
    )
    total = len(main.answers) + len(budgeted.answers)
    last_error = max((moment - redis_killed_at for moment, _, _ in errors), default=0.0)
    report(
        f"\nfleet drill: {total} requests; Sentinel promoted a replica {failover:.2f} s after the primary's kill "
        f"and it had a replica again after {replicated:.2f} s; Redis last could not take replicated writes "
        f"{unhealthy:.2f} s after the kill ({len(watch.primaries)} primaries named); "
        f"the last client-visible error came {last_error:.2f} s after it; errors by window: "
        f"{dict(by_window) or 'none'} ({dict(Counter((status, code) for _, status, code in errors))})"
    )
    outside = [
        (round(moment - redis_killed_at, 3), status, code)
        for moment, status, code in errors
        if not any(start <= moment <= end for start, end in windows.values())
    ]
    assert not outside, (  # one string: pytest prints it whole, where it would cut a tuple's repr
        f"errors outside the windows, (seconds after the Redis kill, status, code): {outside}; the gateway host "
        f"was killed {gateway_killed_at - redis_killed_at:.3f} s after it\n{logs()}"
    )
    redis_window = windows["redis failover"]
    after_restart = [  # the restart itself costs nothing; Redis, still failing over then, may
        moment
        for moment, _, _ in errors
        if moment >= control_plane_restarted_at and not redis_window[0] <= moment <= redis_window[1]
    ]
    assert not after_restart, logs()
    assert len(main.answered()) > 200

    # The revocation made during the failover reaches every gateway, and stays in Redis for a new one.
    survivors = [hosts[0].url, hosts[1].url, proxy.url]
    assert wait_for(lambda: refused_everywhere(survivors), 20), logs()
    (fresh,) = gateway_workers(1, **gateway_env)
    assert refused_everywhere([fresh.url])

    # Every answered request is in the ledger exactly once.
    answered = main.answered() | budgeted.answered()
    stored = UsageRecord.objects.filter(status=200)
    assert wait_for(lambda: answered <= set(stored.values_list("request_id", flat=True)), 60), (
        len(answered - set(stored.values_list("request_id", flat=True))),
        logs(),
    )
    assert stored.count() == len(answered)  # nothing twice, nothing billed that was not answered 200

    # The small budget ran out and was never exceeded, in Redis and in the ledger.
    assert any(status == 402 for _, status, _, _ in budgeted.answers)
    counters = settled_counters(on_sentinel, small)
    ledger = stored.filter(team_id=small_team.pk).aggregate(total=Sum("cost"))["total"] or Decimal(0)
    report(f"small budget: {counters['spent']} of {SMALL_BUDGET_MICROS} micro-dollars spent, ledger ${ledger}")
    assert counters["spent"] <= SMALL_BUDGET_MICROS
    assert ledger * 1_000_000 <= SMALL_BUDGET_MICROS
    # Reached, not merely approached: the last admitted request leaves less than a worst case
    # (gateway/app.py worst_case_cost: the messages' JSON bytes as input tokens, max_tokens as
    # output). A request cut by the host kill was never answered, so never billed, but its hold
    # stays reserved until it expires (RESERVATION_SECONDS): each such one lowers the bound by a
    # worst case. CI saw one, and a ledger 2 requests short.
    worst_case = math.ceil(len(orjson.dumps(BODY["messages"])) * 2.5 + BODY["max_tokens"] * 10)
    cut = sum(1 for _, status, _, _ in budgeted.answers if status == 0)
    assert ledger * 1_000_000 > SMALL_BUDGET_MICROS - 2 * HELLO_COST_MICROS - cut * worst_case, (ledger, cut)

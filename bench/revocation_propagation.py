"""Revocation propagation under load: revoke a key through the API, time until every worker
refuses it, while the rest of the system is busy.

Run: make bench BENCH=revocation_propagation. The whole path is real: an admin API token
calls POST /api/v1/orgs/<org>/keys/<id>/revoke/ (Django's test client, in process), the
service commits, the on-commit hook enqueues the publish task on the publish queue, the config
publisher (a Celery worker of its own, as `make run` and production run it) publishes the delta
to Redis, and four gateway worker processes pick it up. The clock starts before the API call
and stops when the last worker answers 401.

Meanwhile the system is busy as in production: wrk sends chat completions to two of the four
workers, `manage.py ingest_usage` drains their usage into the ledger, the general Celery worker
runs a stream of budget alert checks (besides those ingestion asks for), and beat runs its
schedule. The figure the issue asks for is the p99 of the loaded trials (target under 1 s).
"""

import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness
import load
from run import celery_beat, celery_worker

TRIALS = 60
WORKERS = 4
LOADED_WORKERS = 2
CONCURRENCY = 4
TARGET_P99_SECONDS = 1.0
TRIAL_SECONDS = 2  # one revocation every 2 s, so the load runs for a known time
WARM_UP_SECONDS = 10
LOAD_SECONDS = WARM_UP_SECONDS + TRIALS * TRIAL_SECONDS + 5


async def wait_until_refused(urls: list[str], key: str, deadline: float) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:

        async def refused(url: str) -> float:
            while time.perf_counter() < deadline:
                async with session.get(f"{url}/v1/models", headers=headers) as response:
                    if response.status == 401:
                        return time.perf_counter()
                await asyncio.sleep(0.002)
            raise TimeoutError(url)

        return max(await asyncio.gather(*(refused(url) for url in urls)))


def background_traffic(url: str, key: str, seconds: int, results: list) -> None:
    results.append(load.run_wrk(url, key, concurrency=CONCURRENCY, seconds=seconds))


def busy_celery(org_id: str, stop: threading.Event) -> int:
    """Keep the general Celery worker busy: budget alert checks, five a second."""
    from budgets import tasks

    sent = 0
    while not stop.wait(0.2):
        tasks.check_alerts.delay(org_id)
        sent += 1
    return sent


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        from django.conf import settings
        from django.test import Client

        from audit.context import Actor
        from fleet import services
        from keys.models import CallerKey
        from orgs.roles import Role
        from orgs.services import create_api_token

        simulator, simulator_url = harness.start_simulator()
        org, _team, plaintexts = harness.seed(simulator_url, keys=TRIALS + 1, rpm_limit=1_000_000)
        traffic_key, plaintexts = plaintexts[0], plaintexts[1:]
        _token, admin_token = create_api_token(actor=Actor.system("bench"), org=org, name="bench", role=Role.ADMIN)
        services.publish_pending()
        python = sys.executable
        control_plane = [
            harness.Process([python, *celery_worker(settings.GATEHOUSE_PUBLISH_QUEUE, 1, "publisher")]),
            harness.Process([python, *celery_worker(settings.CELERY_TASK_DEFAULT_QUEUE, 2, "worker")]),
            harness.Process([python, *celery_beat()]),
            harness.Process([python, "manage.py", "ingest_usage", "--consumer", "bench-ingest"]),
        ]
        state = Path(tempfile.mkdtemp())
        workers = [harness.start_gateway(f"bench-propagation-{i}", state) for i in range(WORKERS)]
        urls = [url for _, url in workers]
        client = Client(HTTP_HOST="127.0.0.1")
        digests = {CallerKey.objects.get(digest=harness_digest(p)).pk: p for p in plaintexts}
        timings: list[float] = []
        traffic: list = []
        stop = threading.Event()
        loaders = [
            threading.Thread(target=background_traffic, args=(url, traffic_key, LOAD_SECONDS, traffic))
            for url in urls[:LOADED_WORKERS]
        ]
        celery_load = threading.Thread(target=busy_celery, args=(str(org.pk), stop), daemon=True)
        try:
            time.sleep(3)  # let the Celery workers connect
            for thread in [*loaders, celery_load]:
                thread.start()
            time.sleep(WARM_UP_SECONDS)  # traffic, ingestion and alert checks reach steady state
            first = time.perf_counter()
            for trial, (key_id, plaintext) in enumerate(digests.items()):
                time.sleep(max(0.0, first + trial * TRIAL_SECONDS - time.perf_counter()))
                started = time.perf_counter()
                response = client.post(
                    f"/api/v1/orgs/{org.slug}/keys/{key_id}/revoke/", HTTP_AUTHORIZATION=f"Bearer {admin_token}"
                )
                if response.status_code != 200:
                    raise RuntimeError(f"revoke answered {response.status_code}: {response.content[:200]}")
                finished = asyncio.run(wait_until_refused(urls, plaintext, started + 10))
                timings.append(finished - started)
            for thread in loaders:
                thread.join(timeout=LOAD_SECONDS + 60)
        finally:
            stop.set()
            for process, _ in workers:
                process.stop()
            for process in [*control_plane, simulator]:
                process.stop()
            harness.wipe_redis_prefix()
    rps = sum(result.rps for result in traffic)
    print(
        f"Revocation propagation to {WORKERS} workers, {len(timings)} trials, under load: "
        f"{rps:,.0f} requests/s to {LOADED_WORKERS} workers, ingestion, "
        "a general Celery worker checking alerts, beat (ms)\n"
    )
    print("| p50 | p90 | p99 | max | target p99 |")
    print("|---|---|---|---|---|")
    p50, p90, p99 = (harness.percentile(timings, q) for q in (0.5, 0.9, 0.99))
    print(
        f"| {p50 * 1000:.0f} | {p90 * 1000:.0f} | {p99 * 1000:.0f} | {max(timings) * 1000:.0f} "
        f"| < {TARGET_P99_SECONDS * 1000:.0f} ({'met' if p99 < TARGET_P99_SECONDS else 'NOT met'}) |"
    )


def harness_digest(plaintext: str) -> str:
    import hashlib

    return hashlib.sha256(plaintext.encode()).hexdigest()


if __name__ == "__main__":
    main()

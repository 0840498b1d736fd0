"""Revocation propagation: revoke a key through the API, time until every worker refuses it.

Run: make bench BENCH=revocation_propagation. The whole path is real: an admin API token
calls POST /api/v1/orgs/<org>/keys/<id>/revoke/ (Django's test client, in process), the
service commits, the on-commit hook enqueues the publish task, a real Celery worker process
publishes the delta to Redis, and four gateway worker processes pick it up. The clock
starts before the API call and stops when the last worker answers 401.
"""

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

TRIALS = 50
WORKERS = 4


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


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        from django.test import Client

        from fleet import services
        from keys.models import CallerKey
        from orgs.roles import Role
        from orgs.services import create_api_token

        org, _team, plaintexts = harness.seed("http://127.0.0.1:9", keys=TRIALS)
        from audit.context import Actor

        _token, admin_token = create_api_token(actor=Actor.system("bench"), org=org, name="bench", role=Role.ADMIN)
        services.publish_pending()
        celery = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane",
                "worker",
                "--concurrency",
                "1",
                "-l",
                "warning",
                "-Q",
                "celery",
            ],
            cwd=harness.ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        state = Path(tempfile.mkdtemp())
        workers = [harness.start_gateway(f"bench-propagation-{i}", state) for i in range(WORKERS)]
        urls = [url for _, url in workers]
        client = Client(HTTP_HOST="127.0.0.1")
        digests = {CallerKey.objects.get(digest=harness_digest(p)).pk: p for p in plaintexts}
        timings = []
        try:
            time.sleep(2)  # let the Celery worker connect
            for key_id, plaintext in digests.items():
                started = time.perf_counter()
                response = client.post(
                    f"/api/v1/orgs/{org.slug}/keys/{key_id}/revoke/", HTTP_AUTHORIZATION=f"Bearer {admin_token}"
                )
                if response.status_code != 200:
                    raise RuntimeError(f"revoke answered {response.status_code}: {response.content[:200]}")
                finished = asyncio.run(wait_until_refused(urls, plaintext, started + 10))
                timings.append(finished - started)
        finally:
            for process, _ in workers:
                process.stop()
            celery.terminate()
            celery.wait(timeout=20)
            harness.wipe_redis_prefix()
    print(f"Revocation propagation to {WORKERS} workers, {len(timings)} trials (ms)\n")
    print("| p50 | p90 | p99 | max |")
    print("|---|---|---|---|")
    print(
        "| {:.0f} | {:.0f} | {:.0f} | {:.0f} |".format(
            *(harness.percentile(timings, q) * 1000 for q in (0.5, 0.9, 0.99)), max(timings) * 1000
        )
    )


def harness_digest(plaintext: str) -> str:
    import hashlib

    return hashlib.sha256(plaintext.encode()).hexdigest()


if __name__ == "__main__":
    main()

"""The gateway's data on a 3-master Redis Cluster (issue 13), beyond the budget concurrency test
(tests/budgets/test_enforcement.py runs it on a Cluster too): usage is ingested once, and a
revocation reaches every worker.

The control plane and the gateway workers take REDIS_URL=redis+cluster://...; the Celery broker
stays on the suite's Redis (GATEHOUSE_BROKER_URL cannot be a Cluster).
"""

import asyncio
import time

import httpx
import pytest

from budgets import ingestion
from budgets.models import UsageRecord
from fleet import services
from keys.services import revoke_key
from tests.plugins.gateway_workers import burst

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}


@pytest.fixture
def on_cluster(redis_cluster, use_redis):
    """REDIS_URL is the Cluster for the control plane here and for every worker started after."""
    return use_redis(redis_cluster.url)


def test_usage_on_a_redis_cluster_is_ingested_once(on_cluster, served, gateway_workers):
    workers = gateway_workers(2)
    responses = asyncio.run(burst([w.url for w in workers], served["plaintext"], 40, BODY))
    assert [r.status_code for r in responses] == [200] * 40
    answered = {r.headers["x-request-id"] for r in responses}
    stored = UsageRecord.objects.filter(key_id=served["key"].pk)
    deadline = time.monotonic() + 20
    while stored.count() < len(answered) and time.monotonic() < deadline:
        ingestion.ingest_batch(consumer="cluster-test", count=1000, block_ms=200)
    assert set(stored.values_list("request_id", flat=True)) == answered
    assert ingestion.ingest_batch(consumer="cluster-test", count=1000, block_ms=100).inserted == 0


def test_a_revocation_reaches_every_worker_on_a_redis_cluster(on_cluster, served, gateway_workers, actors, report):
    workers = gateway_workers(2)
    headers = {"Authorization": f"Bearer {served['plaintext']}"}
    url = "{}/v1/chat/completions".format
    for worker in workers:
        assert httpx.post(url(worker.url), json=BODY, headers=headers, timeout=10).status_code == 200
    revoke_key(actor=actors["admin"], key=served["key"])
    services.publish_pending()
    revoked_at = time.monotonic()
    for worker in workers:
        worker.wait(
            lambda w=worker: httpx.post(url(w.url), json=BODY, headers=headers).status_code == 401,
            timeout=5,
        )
    report(f"\nrevocation on the cluster reached both workers in {time.monotonic() - revoked_at:.2f} s")

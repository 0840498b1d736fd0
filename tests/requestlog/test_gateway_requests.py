"""End to end: a request sent through a real gateway worker reaches the ledger through the
ingestion and is found on the request log page by the x-request-id the gateway answered."""

import time

import httpx

from budgets.ingestion import ingest_batch
from budgets.models import UsageRecord

from .conftest import url


def ingest(request_ids: set[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ingest_batch("requestlog-test", 100, block_ms=200)
        if UsageRecord.objects.filter(request_id__in=request_ids).count() == len(request_ids):
            return
    raise AssertionError("the requests did not reach the ledger")


def test_a_gateway_request_is_found_by_its_request_id(served, gateway_workers, client_for):
    (worker,) = gateway_workers(1)
    headers = {"Authorization": f"Bearer {served['plaintext']}", "X-Request-Id": "my-trace-1"}
    answered = httpx.post(
        f"{worker.url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
        headers={**headers, "User-Agent": "requestlog-test/1.0"},
    )
    refused = httpx.post(
        f"{worker.url}/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "hello"}]},
        headers=headers,
    )
    assert answered.status_code == 200 and refused.status_code >= 400
    server_id, refused_id = answered.headers["x-request-id"], refused.headers["x-request-id"]
    ingest({server_id, refused_id})

    client = client_for("developer")  # the key's owner
    page = client.get(url("list"), {"request_id": server_id}).content.decode()
    assert f"/orgs/acme/requests/{server_id}/" in page and refused_id not in page
    by_caller_id = client.get(url("list"), {"request_id": "my-trace-1"}).content.decode()
    assert server_id in by_caller_id and refused_id in by_caller_id

    detail = client.get(url("detail", request_id=server_id))
    assert detail.status_code == 200
    text = detail.content.decode()
    assert "my-trace-1" in text and "sdk" in text and "gpt-4o deployment" in text and "First attempt" in text
    record = UsageRecord.objects.get(request_id=server_id)
    assert record.user_agent == "requestlog-test/1.0" and "requestlog-test/1.0" in text

    failed = client.get(url("detail", request_id=refused_id)).content.decode()
    error_code = UsageRecord.objects.get(request_id=refused_id).error_code
    assert error_code and error_code in failed

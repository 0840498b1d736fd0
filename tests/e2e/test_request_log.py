"""The request log in a real browser (issue 15): a failed request is found by the x-request-id
the gateway answered, with its attempts; a developer cannot open another team's request; an
owner turns content capture on, and the content shown is redacted and its view audited."""

import time

import httpx
import pytest
from playwright.sync_api import expect

from audit.models import AuditEvent
from budgets.ingestion import ingest_batch
from budgets.models import UsageRecord
from fleet import services
from keys.services import issue_key
from orgs.services import create_team
from tests.conftest import PASSWORD, SYSTEM
from tests.e2e.test_browser import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
HELLO = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def ingested(request_id: str) -> None:
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(request_id=request_id).exists():
        assert time.monotonic() < deadline, "the request did not reach the ledger"
        ingest_batch("e2e-request-log", 100, block_ms=200)


def test_a_failed_request_is_found_by_its_request_id_with_its_attempts(
    page, live_server, served, gateway_workers, provider_simulator
):
    provider_simulator.configure(models={"gpt-4o": {"fail_rate": 1, "fail_status": 500}})
    (worker,) = gateway_workers(1)
    failed = httpx.post(
        f"{worker.url}/v1/chat/completions", json=HELLO, headers={"Authorization": f"Bearer {served['plaintext']}"}
    )
    assert failed.status_code == 502
    request_id = failed.headers["x-request-id"]
    ingested(request_id)

    sign_in(page, "owner@acme.test", PASSWORD)
    page.goto("/orgs/acme/requests/")
    page.get_by_label("Request id").fill(request_id)
    page.get_by_role("button", name="Filter").click()
    page.locator(f'a[href="/orgs/acme/requests/{request_id}/"]').first.click()
    page.wait_for_url(f"**/requests/{request_id}/")
    expect(page.get_by_text("upstream_error").first).to_be_visible()
    expect(page.get_by_text("First attempt")).to_be_visible()
    expect(page.get_by_text("Retried").first).to_be_visible()  # the policy retries twice, on 5xx


def test_a_developer_cannot_see_another_teams_request(page, live_server, served, gateway_workers, users, org):
    other_team = create_team(actor=SYSTEM, org=org, name="Other team")
    _key, other_plaintext = issue_key(actor=SYSTEM, team=other_team, name="theirs", user=users["admin"])
    services.publish_pending()
    (worker,) = gateway_workers(1)
    worker.wait(lambda: httpx.get(f"{worker.url}/v1/models", headers={"x-api-key": other_plaintext}).status_code == 200)
    answered = httpx.post(f"{worker.url}/v1/chat/completions", json=HELLO, headers={"x-api-key": other_plaintext})
    assert answered.status_code == 200
    request_id = answered.headers["x-request-id"]
    ingested(request_id)

    sign_in(page, "developer@acme.test", PASSWORD)
    page.goto(f"/orgs/acme/requests/?request_id={request_id}")
    expect(page.locator(f'a[href="/orgs/acme/requests/{request_id}/"]')).to_have_count(0)
    response = page.goto(f"/orgs/acme/requests/{request_id}/")
    assert response is not None and response.status == 404


def test_capture_is_turned_on_in_the_browser_and_the_content_shown_is_redacted_and_audited(
    page, live_server, served, gateway_workers
):
    secret = "sk-proj-E2Ecanary0123456789abcdefXYZ"
    sign_in(page, "owner@acme.test", PASSWORD)
    page.goto("/orgs/acme/settings/")
    page.get_by_role("link", name="Content capture settings").click()
    page.get_by_label("Capture prompts and answers").check()
    page.get_by_label("Also redact (regular expressions, one per line)").fill(r"TICKET-\d+")
    page.get_by_role("button", name="Save capture settings").click()
    expect(page.get_by_text("Capture settings saved")).to_be_visible()
    services.publish_pending()

    (worker,) = gateway_workers(1)
    body = {**HELLO, "messages": [{"role": "user", "content": f"orchid-question {secret} about TICKET-7"}]}
    answered = httpx.post(
        f"{worker.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {served['plaintext']}"}
    )
    assert answered.status_code == 200
    request_id = answered.headers["x-request-id"]
    ingested(request_id)

    page.goto(f"/orgs/acme/requests/{request_id}/")
    expect(page.get_by_text("orchid-question")).to_have_count(0)  # nothing shown until asked
    page.get_by_role("button", name="Show captured content").click()
    prompt = page.get_by_test_id("captured-prompt")
    expect(prompt).to_contain_text("orchid-question")
    expect(prompt).to_contain_text("[REDACTED]")
    expect(prompt).not_to_contain_text(secret)
    expect(prompt).not_to_contain_text("TICKET-7")
    expect(page.get_by_test_id("captured-answer")).to_contain_text("chat.completion")

    page.goto("/orgs/acme/audit/")
    expect(page.get_by_text("request.content_viewed").first).to_be_visible()
    assert AuditEvent.objects.filter(action="request.content_viewed", target_id=request_id).count() == 1

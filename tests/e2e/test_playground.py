"""The playground in a real browser (issue 15): a developer sends one prompt to two models, and
both answers stream in from a real gateway worker, which the browser calls itself (CORS) with a
key minted for it."""

import re
import time

import pytest
from playwright.sync_api import expect

from fleet import services
from keys.models import CallerKey
from keys.services import PLAYGROUND_TAG
from tests.conftest import PASSWORD
from tests.e2e.test_browser import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STREAM_SECONDS = 2  # 40 tokens at 20 a second: long enough to see the text arrive before the end


def publish_the_minted_key(timeout: float = 15) -> CallerKey:
    """What the config publisher does on commit (no Celery worker runs here): push the key the
    page minted to the gateways, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        key = CallerKey.objects.filter(tags__contains=[PLAYGROUND_TAG]).first()
        if key is not None:
            services.publish_pending()
            return key
        time.sleep(0.05)
    raise AssertionError("the page minted no playground key")


def test_one_prompt_to_two_models_streams_both_answers(
    page, live_server, served, gateway_workers, provider_simulator, settings, users
):
    provider_simulator.configure(models={"*": {"tokens_per_second": 20, "completion_tokens": 40}})
    (worker,) = gateway_workers(1, GATEWAY_CORS_ORIGINS=live_server.url)
    settings.GATEHOUSE_PLAYGROUND_GATEWAY_URL = f"{worker.url}/v1"
    sign_in(page, "developer@acme.test", PASSWORD)

    page.goto("/orgs/acme/playground/")
    page.get_by_label("gpt-4o").check()
    page.get_by_label("claude-sonnet").check()
    page.get_by_label("System message").fill("Answer briefly.")
    page.get_by_label("User message").fill("Which gateway is this?")
    page.get_by_role("button", name="Send to all").click()
    key = publish_the_minted_key()

    panes = [page.locator(f'article[data-model="{model}"]') for model in ("gpt-4o", "claude-sonnet")]
    for pane in panes:  # text arrives while the stream is still open
        expect(pane.locator('[data-field="text"]')).to_contain_text("Gatehouse simulated")
        expect(pane).to_have_attribute("aria-busy", "true")
    expect(page.get_by_role("status").filter(has_text="All answers are in.")).to_be_visible(
        timeout=(STREAM_SECONDS + 10) * 1000
    )
    for pane in panes:
        expect(pane).to_have_attribute("aria-busy", "false")
        expect(pane.locator('[data-field="text"]')).to_have_text(re.compile(r"^\s*(\w+\s+){39}\w+\s*$"))
        expect(pane.locator('[data-field="ttft"]')).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
        expect(pane.locator('[data-field="latency"]')).to_have_text(re.compile(r"^\d\.\d\d s$"))
        expect(pane.locator('[data-field="tokens"]')).to_have_text(re.compile(r"^\d+ / 40$"))
        expect(pane.locator('[data-field="cost"]')).to_have_text(re.compile(r"^\$0\.000\d+"))
        expect(pane.locator('[data-field="status"]')).to_contain_text("Done. Request ")

    # The key stayed in the page's memory: never on it, and it was the person's own, for the team.
    assert key.prefix not in page.content()
    assert (key.user, key.team) == (users["developer"], served["team"])
    # The session's history keeps the prompt; "show code" gives the same call.
    expect(page.locator("#playground-history li")).to_have_count(1)
    page.get_by_text("Show code").click()
    expect(page.locator("#code-curl")).to_contain_text(f"{worker.url}/v1/chat/completions")
    expect(page.locator("#code-python")).to_contain_text('model="claude-sonnet"')  # the first column
    expect(page.locator("#code-note")).to_contain_text("set model to gpt-4o")
    expect(page.locator("#code-javascript")).to_contain_text("Which gateway is this?")

"""A team's ceiling binds the keys issued before it changed (issue 12, finding 1): a key's models
are its own list within its team's, and its RPM/TPM never exceed the team's, on every worker as
soon as the team's change is published, with no change to the keys."""

import time

import httpx
import pytest

from fleet import services
from fleet.models import ConfigRevision
from keys.services import issue_key
from orgs.services import set_team_limits
from tests.plugins.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def chat(worker, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(
        f"{worker.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def models(worker, key: str) -> list[str]:
    answer = httpx.get(f"{worker.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return [model["id"] for model in answer.json()["data"]]


def publish_and_wait(worker) -> float:
    """Publish, and return how long the worker took to run the new revision."""
    started = time.monotonic()
    services.publish_pending()
    newest = ConfigRevision.objects.order_by("-number").first().number
    assert wait_for(lambda: worker.revision() == newest, 5)
    return time.monotonic() - started


def test_narrowing_a_team_binds_a_key_that_named_its_own_models(served, actors, gateway_workers):
    team = served["team"]
    _key, plaintext = issue_key(actor=actors["admin"], team=team, name="own list", allowed_models=["gpt-4o"])
    (worker,) = gateway_workers(1)
    publish_and_wait(worker)
    assert chat(worker, plaintext, "gpt-4o").status_code == 200

    set_team_limits(actor=actors["admin"], team=team, allowed_models=["claude-sonnet"], rpm_limit=None, tpm_limit=None)
    assert publish_and_wait(worker) < 1.5
    refused = chat(worker, plaintext, "gpt-4o")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    # Nothing is left in common: the key may call no model, not every model.
    assert chat(worker, plaintext, "claude-sonnet").status_code == 403
    assert models(worker, plaintext) == []
    # A key without a list of its own follows the team's.
    assert models(worker, served["plaintext"]) == ["claude-sonnet"]


def test_a_team_rate_limit_set_later_binds_a_key_issued_without_one(served, actors, gateway_workers):
    team = served["team"]
    (worker,) = gateway_workers(1)
    publish_and_wait(worker)
    set_team_limits(actor=actors["admin"], team=team, allowed_models=[], rpm_limit=2, tpm_limit=None)
    publish_and_wait(worker)
    statuses = [chat(worker, served["plaintext"], "gpt-4o").status_code for _ in range(5)]
    if statuses[:2] != [200, 200]:  # the minute turned between two calls: one more try in the new one
        statuses = [chat(worker, served["plaintext"], "gpt-4o").status_code for _ in range(5)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:]


def test_a_key_limit_below_the_teams_still_applies(served, actors, gateway_workers):
    team = served["team"]
    _key, plaintext = issue_key(actor=actors["admin"], team=team, name="tight", rpm_limit=1)
    set_team_limits(actor=actors["admin"], team=team, allowed_models=[], rpm_limit=100, tpm_limit=None)
    (worker,) = gateway_workers(1)
    publish_and_wait(worker)
    statuses = [chat(worker, plaintext, "gpt-4o").status_code for _ in range(3)]
    assert statuses.count(200) <= 2 and 429 in statuses

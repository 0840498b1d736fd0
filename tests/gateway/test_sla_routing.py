"""SLA policies in the gateway, under the provider simulator's fault knobs."""

import json
import time
from decimal import Decimal

import httpx
import pytest

from fleet import services
from fleet.changes import record_config_change
from fleet.redis_client import redis_keys
from keys.services import create_credential, issue_key
from sla.models import SlaPolicy
from sla.services import create_deployment, create_route

BODY = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


@pytest.fixture
def two_deployments(org, team, actors, provider_simulator, clean_redis, fresh_key_ring):
    """Route "duo" served by deployment "primary" (upstream model a-model), then "backup" (b-model)."""
    credential = create_credential(
        actor=actors["admin"],
        org=org,
        name="Sim",
        provider="openai_compatible",
        base_url=f"{provider_simulator.url}/v1",
        secrets={"api_key": "sk-sim-000000000"},
    )
    primary = create_deployment(
        actor=actors["admin"],
        org=org,
        name="primary",
        credential=credential,
        upstream_model="a-model",
        input_price_per_mtok=Decimal(1),
        output_price_per_mtok=Decimal(4),
    )
    backup = create_deployment(
        actor=actors["admin"],
        org=org,
        name="backup",
        credential=credential,
        upstream_model="b-model",
        input_price_per_mtok=Decimal(2),
        output_price_per_mtok=Decimal(8),
    )
    create_route(actor=actors["admin"], org=org, alias="duo", deployments=[primary, backup])
    _key, plaintext = issue_key(actor=actors["admin"], team=team, name="sla")
    return {"primary": primary, "backup": backup, "key": plaintext}


def policy(org, **fields) -> SlaPolicy:
    defaults = {
        "name": "Default",
        "breaker_min_requests": 4,
        "breaker_window_seconds": 60,
        "breaker_cooldown_seconds": 1,
        "backoff_base_ms": 10,
        "backoff_max_ms": 50,
    }
    created = SlaPolicy.objects.create(org=org, **{**defaults, **fields})
    record_config_change("policy", created.pk)
    services.publish_pending()
    return created


def ask(worker, key, **extra) -> httpx.Response:
    return httpx.post(
        f"{worker.url}/v1/chat/completions",
        json={"model": "duo", **BODY, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def breakers_of(clean_redis, worker) -> dict:
    return json.loads(clean_redis.hget(redis_keys().node(worker.node_id), "breakers") or b"{}")


def test_a_failing_deployment_falls_back_opens_its_breaker_and_closes_on_recovery(
    org, two_deployments, provider_simulator, gateway_workers, clean_redis
):
    policy(org)
    provider_simulator.configure(models={"a-model": {"fail_rate": 1.0, "fail_status": 500}})
    (worker,) = gateway_workers(1)
    primary, backup = str(two_deployments["primary"].pk), str(two_deployments["backup"].pk)
    answers = [ask(worker, two_deployments["key"]) for _ in range(12)]
    assert [a.status_code for a in answers] == [200] * 12  # clients see no error
    assert {a.headers["x-gatehouse-deployment"] for a in answers} == {backup}
    stats = provider_simulator.stats()
    assert stats.get("a-model", 0) == 4  # the breaker opened after 4 failures: no more traffic to it
    worker.wait(lambda: breakers_of(clean_redis, worker).get(primary, {}).get("state") in {"open", "half_open"})
    provider_simulator.configure(models={"a-model": {"fail_rate": 0.0}})
    time.sleep(1.1)  # the cool-down ends; the next request is the half-open probe
    assert ask(worker, two_deployments["key"]).headers["x-gatehouse-deployment"] == primary
    assert ask(worker, two_deployments["key"]).headers["x-gatehouse-deployment"] == primary  # closed again


def test_a_hanging_deployment_is_left_after_the_first_token_timeout(
    org, two_deployments, provider_simulator, gateway_workers
):
    policy(org, first_token_timeout_ms=300, total_timeout_ms=5_000)
    provider_simulator.configure(models={"a-model": {"hang": True}})
    (worker,) = gateway_workers(1)
    for stream in (False, True):
        started = time.monotonic()
        answer = ask(worker, two_deployments["key"], stream=stream)
        elapsed = time.monotonic() - started
        assert answer.status_code == 200
        assert answer.headers["x-gatehouse-deployment"] == str(two_deployments["backup"].pk)
        assert 0.3 <= elapsed < 2.0  # moved on after the 300 ms first-token timeout


def test_the_latency_strategy_shifts_traffic_to_the_faster_deployment(
    org, two_deployments, provider_simulator, gateway_workers
):
    policy(org, strategy="latency")
    provider_simulator.configure(models={"a-model": {"latency_ms": 80}, "b-model": {"latency_ms": 5}})
    (worker,) = gateway_workers(1)
    answers = [ask(worker, two_deployments["key"]).headers["x-gatehouse-deployment"] for _ in range(20)]
    backup = str(two_deployments["backup"].pk)
    assert answers[-10:] == [backup] * 10  # once both are measured, the faster one takes the traffic


def test_retry_after_is_honoured(org, two_deployments, provider_simulator, gateway_workers, actors, team):
    policy(org, allowed_providers=[], max_retries=1)
    # Only the primary may serve: the backup is in a region the policy excludes.
    backup = two_deployments["backup"]
    backup.region = "eu-west"
    backup.save()
    record_config_change("deployment", backup.pk)
    SlaPolicy.objects.filter(org=org).update(allowed_regions=["global"])
    record_config_change("policy", SlaPolicy.objects.get(org=org).pk)
    services.publish_pending()
    provider_simulator.configure(models={"a-model": {"fail_rate": 1.0, "fail_status": 429, "retry_after": 0.5}})
    (worker,) = gateway_workers(1)
    started = time.monotonic()
    answer = ask(worker, two_deployments["key"])
    elapsed = time.monotonic() - started
    assert answer.status_code == 429
    # The provider's 429, told apart from the key's own RPM limit (rate_limit_exceeded).
    assert answer.json()["error"]["code"] == "upstream_rate_limited"
    assert provider_simulator.stats()["a-model"] == 2  # the retry waited for Retry-After, then tried again
    assert elapsed >= 0.5


def test_every_attempt_is_recorded_in_the_usage_event(
    org, two_deployments, provider_simulator, gateway_workers, clean_redis
):
    policy(org)
    provider_simulator.configure(models={"a-model": {"fail_rate": 1.0, "fail_status": 503}})
    (worker,) = gateway_workers(1)
    assert ask(worker, two_deployments["key"]).status_code == 200
    deadline = time.monotonic() + 3
    events = []
    while not events and time.monotonic() < deadline:
        events = clean_redis.xrange(redis_keys().usage_stream)
        time.sleep(0.05)
    attempts = json.loads(events[-1][1][b"attempts"])
    assert [(a["deployment_id"], a["status"]) for a in attempts] == [
        (str(two_deployments["primary"].pk), 502),
        (str(two_deployments["backup"].pk), 200),
    ]

"""A gateway worker's /metrics: labelled by model alias, deployment and status, never by what a
caller made up; readable only with the metrics token or from loopback; and its logs are JSON."""

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

CHAT = "/v1/chat/completions"
TOKEN = "gateway-metrics-token-5b1e9d7c"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], **fields}


def test_requests_are_labelled_by_configured_alias_deployment_and_status(served, gateway_workers):
    (worker,) = gateway_workers(1)
    caller = httpx.Client(base_url=worker.url, headers={"Authorization": f"Bearer {served['plaintext']}"}, timeout=10)
    answered = caller.post(CHAT, json=chat("gpt-4o"))
    assert answered.status_code == 200
    deployment = answered.headers["x-gatehouse-deployment"]
    streamed = caller.post(CHAT, json=chat("gpt-4o", stream=True))
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("[DONE]")
    assert caller.post(CHAT, json=chat("made-up-model-4f2a")).status_code == 404
    assert httpx.post(worker.url + CHAT, json=chat("another-made-up-model-9c1d")).status_code == 401

    text = worker.get("/metrics").text
    found = samples(text)

    def requests(model: str, deployment: str, status: str) -> float:
        labels = {"endpoint": "chat.completions", "model": model, "deployment": deployment, "status": status}
        return found.get(("gateway_requests_total", frozenset(labels.items())), 0.0)

    assert requests("gpt-4o", deployment, "200") == 2
    assert requests("other", "none", "404") == 1  # a model no route of the org defines
    assert requests("other", "none", "401") == 1  # refused before the model was read
    assert "made-up-model" not in text
    tokens = {"direction": "output", "model": "gpt-4o", "deployment": deployment}
    assert found[("gateway_tokens_total", frozenset(tokens.items()))] > 0
    assert found[("gateway_request_seconds_count", frozenset({("model", "gpt-4o")}))] == 2
    assert found[("gateway_upstream_seconds_count", frozenset({("deployment", deployment)}))] == 2
    assert found[("gateway_errors_total", frozenset({("code", "model_not_found")}))] == 1


def test_a_proxied_scrape_is_refused_without_a_token(served, gateway_workers):
    (worker,) = gateway_workers(1)
    assert worker.get("/metrics").status_code == 200  # loopback, direct
    proxied = httpx.get(worker.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5)
    assert proxied.status_code == 403
    assert proxied.json()["error"]["code"] == "forbidden"


def test_with_a_token_only_a_scrape_bearing_it_is_answered(served, gateway_workers):
    (worker,) = gateway_workers(1, GATEHOUSE_METRICS_TOKEN=TOKEN)
    assert worker.get("/metrics").status_code == 403  # loopback is not enough any more
    wrong = httpx.get(worker.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 403
    right = httpx.get(worker.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert right.status_code == 200 and "gateway_requests_total" in right.text


def test_the_worker_logs_one_json_object_per_line(served, gateway_workers):
    (worker,) = gateway_workers(1, GATEWAY_LOG_FORMAT="json")
    worker.wait(lambda: "config revision" in worker.log())
    lines = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    [applied] = [line for line in lines if line["message"].startswith("config revision")]
    assert (applied["logger"], applied["level"], applied["role"]) == ("gateway.follower", "INFO", "gateway")
    assert applied["time"].endswith("Z")

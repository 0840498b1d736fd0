"""The gateway's API surface (issue 14): JSON errors for unknown paths and methods, model lookup,
404 for an unrouted model and 403 for a forbidden one, `x-api-key`, token counts, rate-limit
headers, and which requests pass through in the provider's own format."""

import httpx
import pytest

from fleet import services
from gateway import messages_api
from keys.services import issue_key

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def worker(matrix, gateway_workers):
    (started,) = gateway_workers(1)
    started.wait(lambda: started.revision() is not None)
    return started


def caller(worker, key: str, **headers) -> httpx.Client:
    return httpx.Client(base_url=worker.url, headers={"Authorization": f"Bearer {key}", **headers}, timeout=15)


def test_unknown_paths_and_methods_answer_json_in_openai_shape(worker, matrix):
    client = caller(worker, matrix["plaintext"])
    legacy = client.post("/v1/completions", json={"model": "x", "prompt": "Hi"})
    assert legacy.status_code == 404
    assert legacy.json()["error"]["code"] == "not_found" and legacy.json()["error"]["type"] == "not_found_error"
    wrong_method = client.get("/v1/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert client.delete("/v1/models/chat-openai").status_code == 405


def test_a_model_is_retrieved_404_when_unrouted_and_403_when_forbidden(worker, matrix, actors, team):
    client = caller(worker, matrix["plaintext"])
    found = client.get("/v1/models/chat-gemini")
    assert found.status_code == 200 and found.json() == {
        "id": "chat-gemini",
        "object": "model",
        "created": 0,
        "owned_by": "gatehouse",
    }
    missing = client.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    _key, narrow = issue_key(actor=actors["admin"], team=team, name="narrow", allowed_models=["chat-gemini"])
    services.publish_pending()
    worker.wait(lambda: caller(worker, narrow).get("/v1/models").status_code == 200)
    narrowed = caller(worker, narrow)
    assert narrowed.get("/v1/models/chat-anthropic").status_code == 403
    chat = narrowed.post("/v1/chat/completions", json={"model": "chat-anthropic", "messages": HELLO})
    assert chat.status_code == 403 and chat.json()["error"]["code"] == "model_not_allowed"
    unrouted = narrowed.post("/v1/chat/completions", json={"model": "no-such-model", "messages": HELLO})
    assert unrouted.status_code == 404 and unrouted.json()["error"]["code"] == "model_not_found"


def test_x_api_key_authenticates_and_errors_on_messages_are_in_anthropic_shape(worker, matrix):
    key = matrix["plaintext"]
    plain = httpx.Client(base_url=worker.url, timeout=15)
    answered = plain.post(
        "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "chat-gemini", "max_tokens": 32, "messages": HELLO},
    )
    assert answered.status_code == 200 and answered.json()["type"] == "message"
    chat = plain.post(
        "/v1/chat/completions", headers={"x-api-key": key}, json={"model": "chat-gemini", "messages": HELLO}
    )
    assert chat.status_code == 200
    anonymous = plain.post("/v1/messages", json={"model": "chat-gemini", "max_tokens": 32, "messages": HELLO})
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": anonymous.json()["error"]["message"]},
    }
    unknown = plain.post(
        "/v1/messages", headers={"x-api-key": key}, json={"model": "nope", "max_tokens": 32, "messages": HELLO}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


def test_count_tokens_asks_anthropic_and_estimates_for_the_others(worker, matrix):
    client = caller(worker, matrix["plaintext"])
    native = client.post("/v1/messages/count_tokens", json={"model": "chat-anthropic", "messages": HELLO})
    assert native.status_code == 200 and native.json() == {"input_tokens": 6}  # the simulator's own count
    body = {"model": "chat-gemini", "messages": HELLO}
    estimated = client.post("/v1/messages/count_tokens", json=body)
    assert estimated.status_code == 200
    assert estimated.json() == {"input_tokens": messages_api.count_tokens_estimate(body)}


def test_native_requests_pass_through_and_translated_ones_refuse_what_they_cannot_carry(worker, matrix):
    client = caller(worker, matrix["plaintext"])
    # top_k exists only in Anthropic's API: Anthropic deployments get it, others say so.
    with_top_k = {"max_tokens": 32, "messages": HELLO, "top_k": 5}
    assert client.post("/v1/messages", json={**with_top_k, "model": "chat-anthropic"}).status_code == 200
    refused = client.post("/v1/messages", json={**with_top_k, "model": "chat-gemini"})
    assert refused.status_code == 400 and "top_k" in refused.json()["error"]["message"]
    # previous_response_id reaches OpenAI itself (which knows no such response); elsewhere the
    # gateway refuses it, as it keeps no conversation state.
    follow_up = {"input": "And then?", "previous_response_id": "resp_unknown"}
    passed = client.post("/v1/responses", json={**follow_up, "model": "chat-openai"})
    assert passed.status_code == 400 and "provider refused" in passed.json()["error"]["message"]
    kept = client.post("/v1/responses", json={**follow_up, "model": "chat-bedrock"})
    assert kept.status_code == 400 and "previous_response_id" in kept.json()["error"]["message"]


def test_rate_limit_headers_on_answers_and_streams(worker, matrix):
    client = caller(worker, matrix["plaintext"])
    first = client.post("/v1/chat/completions", json={"model": "chat-openai", "messages": HELLO})
    second = client.post("/v1/chat/completions", json={"model": "chat-openai", "messages": HELLO, "stream": True})
    for answer in (first, second):
        assert answer.headers["x-ratelimit-limit-requests"] == "1000"
        assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in answer.headers  # the key has no TPM limit
    used = 1000 - int(first.headers["x-ratelimit-remaining-requests"])
    assert 1000 - int(second.headers["x-ratelimit-remaining-requests"]) in (used + 1, 1)  # or a new minute


def test_a_stream_that_breaks_midway_ends_with_the_apis_own_error_event(worker, matrix, provider_simulator):
    """The provider drops the connection after two tokens: the Anthropic and Responses clients
    get their API's error event (so their SDKs raise), not a stream that looks complete."""
    provider_simulator.configure(models={"*": {"break_after": 2}})
    client = caller(worker, matrix["plaintext"])
    body = {"model": "chat-openai-compatible", "max_tokens": 32, "messages": HELLO, "stream": True}
    messages = client.post("/v1/messages", json=body)
    assert messages.status_code == 200
    assert "event: error" in messages.text and "message_stop" not in messages.text
    responses = client.post("/v1/responses", json={"model": "chat-bedrock", "input": "Hello", "stream": True})
    assert responses.status_code == 200 and "response.output_text.delta" in responses.text
    responses = client.post("/v1/responses", json={"model": "chat-openai-compatible", "input": "Hello", "stream": True})
    assert "event: response.failed" in responses.text and "response.completed" not in responses.text

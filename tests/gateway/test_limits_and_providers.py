"""Rate limits shared by workers, and the Anthropic translation both ways."""

import json
import time

import httpx
import openai
import pytest

from fleet import services
from gateway.anthropic import AnthropicStreamTranslator, request_to_anthropic, response_from_anthropic
from keys.services import issue_key


def sdk(worker, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key=key, max_retries=0, timeout=10)


def within_one_minute() -> None:
    """Windows are fixed UTC minutes (gateway/rate_limits.py): requests that straddle a minute's
    end count in two windows (seen in CI at 03:13:59.985 / 03:14:00.028). Start after it."""
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.05)


def test_rpm_limit_is_shared_across_workers_and_answers_429_with_retry_after(served, gateway_workers, actors, team):
    _key, plaintext = issue_key(actor=actors["admin"], team=team, name="limited", rpm_limit=3)
    services.publish_pending()
    first, second = gateway_workers(2)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Authorization": f"Bearer {plaintext}"}
    within_one_minute()
    statuses = [
        httpx.post(f"{worker.url}/v1/chat/completions", json=body, headers=headers).status_code
        for worker in (first, second, first, second)
    ]
    assert statuses == [200, 200, 200, 429]
    refused = httpx.post(f"{first.url}/v1/chat/completions", json=body, headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61


def test_tpm_limit_refuses_once_the_minute_is_spent(served, gateway_workers, actors, team):
    _key, plaintext = issue_key(actor=actors["admin"], team=team, name="tokens", tpm_limit=30)
    services.publish_pending()
    (worker,) = gateway_workers(1)
    client = sdk(worker, plaintext)
    within_one_minute()
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])  # ~21 tokens
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])  # now over 30
    with pytest.raises(openai.RateLimitError):
        for _ in range(20):  # the counter is added just after each answer
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])


def test_anthropic_deployment_through_the_openai_sdk(served, gateway_workers):
    (worker,) = gateway_workers(1)
    client = sdk(worker, served["plaintext"])
    reply = client.chat.completions.create(
        model="claude-sonnet",
        messages=[{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
        max_tokens=3,
    )
    assert reply.choices[0].message.content == "Gatehouse simulated answer"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 3
    chunks = list(
        client.chat.completions.create(
            model="claude-sonnet",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Gatehouse simulated"
    assert chunks[-1].usage.completion_tokens == 2


def test_request_translation_moves_system_tools_and_tool_results():
    body = {
        "model": "claude-sonnet",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
        "tool_choice": "required",
        "stop": "END",
    }
    request = request_to_anthropic(body, "claude-sonnet-4")
    assert request["system"] == "You are terse."
    assert request["max_tokens"] == 4096
    assert request["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}],
    }
    assert request["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}
    assert request["tools"][0]["input_schema"] == {"type": "object", "properties": {}}
    assert request["tool_choice"] == {"type": "any"}
    assert request["stop_sequences"] == ["END"]


def test_response_translation_of_tool_use_and_stop_reasons():
    message = {
        "id": "msg_1",
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 4},
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
    }
    completion, input_tokens, output_tokens = response_from_anthropic(message, "claude-sonnet")
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert (input_tokens, output_tokens) == (10, 4)
    assert (
        response_from_anthropic({**message, "stop_reason": "max_tokens"}, "x")[0]["choices"][0]["finish_reason"]
        == "length"
    )


def test_stream_translation_of_a_tool_call():
    translator = AnthropicStreamTranslator("claude-sonnet", include_usage=True)
    events = [
        {"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 7}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "tu_9", "name": "f"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "1}"}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
    ]
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0]["id"] == "tu_9" and calls[0]["function"]["name"] == "f"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"a":1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}

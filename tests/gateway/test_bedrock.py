"""The Bedrock adapter (gateway/bedrock.py) against the simulator's AWS wire formats, in process:
Converse, ConverseStream frames, Titan embeddings, STS AssumeRole and SigV4 verification."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from gateway.bedrock import BedrockAdapter, EventStreamDecoder, converse_request, sign
from gateway.config import CredentialConfig, DeploymentConfig
from gateway.errors import GatewayError
from gateway.http_client import HttpClient
from gateway.providers import Outbound, Target
from gateway.simulator.app import create_app
from gateway.simulator.bedrock import encode_frame, event_frame, exception_frame
from gateway.simulator.behaviour import IMAGE_TOKENS, count_tokens, embedding_vector, example_from_schema

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
EMBEDDING_MODEL = "amazon.titan-embed-text-v2:0"
ACCESS_KEY = "AKIAGATEHOUSETEST001"
CANARY = "CANARY/secret+7f3a9d0e1b2c3d4e5f60718293a4b5c6d7e8f9"  # must never reach an error
ROLE = "arn:aws:iam::123456789012:role/gatehouse-bedrock"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
    "required": ["name", "age", "tags"],
}


def make_target(secret: str = CANARY, model: str = MODEL, **credential: str) -> Target:
    fields = {"base_url": "", "region": "us-east-1", "access_key_id": ACCESS_KEY, "role_arn": "", **credential}
    return Target(
        credential=CredentialConfig(
            id="cred-1",
            org_id="org-1",
            provider="bedrock",
            azure_endpoint="",
            azure_api_version="",
            team_ids=(),
            sealed_api_key="sealed",
            **fields,
        ),
        deployment=DeploymentConfig(
            id="dep-1", org_id="org-1", credential_id="cred-1", upstream_model=model, max_output_tokens=4096, prices=()
        ),
        secret=secret,
    )


class Simulator:
    """The provider simulator in process: `send` posts an Outbound, `fetch` is the adapter's
    Fetcher for STS (it counts and records the calls)."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client
        self.sts_urls: list[str] = []

    async def fetch(self, url: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
        self.sts_urls.append(url)
        answer = await self.client.post(url, headers=headers, content=payload)
        return answer.status_code, answer.content

    async def send(self, outbound: Outbound) -> httpx.Response:
        return await self.client.post(outbound.url, headers=outbound.headers, content=outbound.payload)

    async def know(self, keys: dict[str, str | None]) -> None:
        answer = await self.client.post("http://simulator/_sim/aws/keys", json=keys)
        assert answer.status_code == 200

    async def configure(self, settings: dict[str, Any]) -> None:
        answer = await self.client.post("http://simulator/_sim/config", json=settings)
        assert answer.status_code == 200

    async def chat(self, adapter: BedrockAdapter, body: dict[str, Any], target: Target | None = None) -> httpx.Response:
        outbound = await adapter.chat_request(target or make_target(), body, False, self.fetch)
        return await self.send(outbound)

    async def stream(self, adapter: BedrockAdapter, body: dict[str, Any], target: Target | None = None) -> bytes:
        outbound = await adapter.chat_request(target or make_target(), body, True, self.fetch)
        answer = await self.send(outbound)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/vnd.amazon.eventstream"
        return answer.content


T = TypeVar("T")


def simulate(scenario: Callable[[Simulator], Awaitable[T]], secret: str = CANARY) -> T:
    """Run a scenario against a fresh simulator that knows the test key's secret."""

    async def main() -> T:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport) as client:
            simulator = Simulator(client)
            await simulator.know({ACCESS_KEY: secret})
            return await scenario(simulator)

    return asyncio.run(main())


def chunks_of(adapter: BedrockAdapter, data: bytes, piece: int, include_usage: bool = True) -> list[dict[str, Any]]:
    """Decode and translate a stream's bytes fed `piece` bytes at a time."""
    decoder, translator = adapter.event_decoder(), adapter.stream_translator("claude", include_usage)
    chunks: list[dict[str, Any]] = []
    for offset in range(0, len(data), piece):
        for event in decoder.feed(data[offset : offset + piece]):
            chunks.extend(translator.feed(event))
    decoder.finish()
    return chunks + translator.finish()


async def no_sts(url: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
    raise AssertionError("a credential without a role needs no STS")


def chat_body(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there, Bedrock"}]
    return {"model": "claude", "messages": messages, **extra}


SIMPLE_INPUT_TOKENS = 4 + count_tokens("Hello there, Bedrock") + count_tokens("Answer briefly.")


# Translation ---------------------------------------------------------------------------------


def test_it_translates_the_conversation():
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "Snow"}]},
            {"role": "user", "content": "Thanks."},
        ],
        "tools": [WEATHER_TOOL],
    }
    request = converse_request(body)
    assert request["system"] == [{"text": "Be brief."}, {"text": "Use metric units."}]
    assert request["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris and Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {"city": "Oslo"}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"text": "Sunny"}]}},
                {"toolResult": {"toolUseId": "call_2", "content": [{"text": "Snow"}]}},
                {"text": "Thanks."},
            ],
        },
    ]
    assert request["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]},
                }
            }
        ]
    }


def test_it_translates_inference_parameters():
    request = converse_request(
        chat_body(max_completion_tokens=50, max_tokens=9, temperature=0.2, top_p=0.9, stop="END")
    )
    assert request["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", None),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
    ],
)
def test_it_translates_tool_choice(choice, expected):
    request = converse_request(chat_body(tools=[WEATHER_TOOL], tool_choice=choice))
    assert request["toolConfig"].get("toolChoice") == expected


def test_tool_choice_none_leaves_the_tools_out():
    assert "toolConfig" not in converse_request(chat_body(tools=[WEATHER_TOOL], tool_choice="none"))


def test_it_sends_data_url_images_as_image_blocks():
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    request = converse_request({"messages": [{"role": "user", "content": content}]})
    assert request["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}


def test_it_refuses_image_urls_bedrock_cannot_fetch():
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(GatewayError) as refused:
        converse_request({"messages": [{"role": "user", "content": content}]})
    assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
    assert "'image_url'" in refused.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("logprobs", True),
        ("top_logprobs", 3),
        ("logit_bias", {"50256": -100}),
        ("seed", 7),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("n", 2),
        ("parallel_tool_calls", False),
        ("service_tier", "flex"),
        ("functions", [{"name": "f"}]),
    ],
)
def test_it_refuses_parameters_bedrock_cannot_honour(name, value):
    with pytest.raises(GatewayError) as refused:
        converse_request(chat_body(**{name: value}))
    assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
    assert f"'{name}'" in refused.value.message


def test_it_accepts_parameters_at_their_defaults():
    body = chat_body(logprobs=False, presence_penalty=0, frequency_penalty=0, n=1, user="u-1", seed=None)
    assert converse_request(body) == converse_request(chat_body())


def test_json_mode_cannot_be_combined_with_tools():
    with pytest.raises(GatewayError) as refused:
        converse_request(chat_body(tools=[WEATHER_TOOL], response_format={"type": "json_object"}))
    assert "'response_format'" in refused.value.message


def test_it_signs_for_the_regional_endpoint():
    async def scenario(simulator: Simulator) -> Outbound:
        return await BedrockAdapter().chat_request(make_target(region="eu-west-3"), chat_body(), False, simulator.fetch)

    outbound = simulate(scenario)
    assert outbound.url == (
        "https://bedrock-runtime.eu-west-3.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    )
    assert outbound.headers["host"] == "bedrock-runtime.eu-west-3.amazonaws.com"
    assert outbound.headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/eu-west-3/bedrock/aws4_request, SignedHeaders=host;x-amz-date, " in outbound.headers["Authorization"]
    assert "X-Amz-Security-Token" not in outbound.headers
    assert json.loads(outbound.payload)["messages"][0]["content"] == [{"text": "Hello there, Bedrock"}]


# Chat against the simulator ------------------------------------------------------------------


def test_it_answers_a_chat():
    adapter = BedrockAdapter()
    answer = simulate(lambda simulator: simulator.chat(adapter, chat_body()))
    assert answer.status_code == 200, answer.text
    completion, usage = adapter.chat_answer(answer.json(), "claude")
    assert completion["model"] == "claude"
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": " ".join(["Gatehouse", "simulated", "answer", "token"] * 4),
    }
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert (usage.input_tokens, usage.output_tokens, usage.reported) == (SIMPLE_INPUT_TOKENS, 16, True)
    assert completion["usage"] == {
        "prompt_tokens": SIMPLE_INPUT_TOKENS,
        "completion_tokens": 16,
        "total_tokens": SIMPLE_INPUT_TOKENS + 16,
    }


def test_a_cut_answer_finishes_with_length():
    adapter = BedrockAdapter()
    answer = simulate(lambda simulator: simulator.chat(adapter, chat_body(max_tokens=3)))
    completion, usage = adapter.chat_answer(answer.json(), "claude")
    assert completion["choices"][0]["message"]["content"] == "Gatehouse simulated answer"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert usage.output_tokens == 3


@pytest.mark.parametrize("piece", [1, 3, 7, 50, 1_000_000])
def test_it_streams_a_chat_whatever_the_byte_boundaries(piece):
    adapter = BedrockAdapter()
    data = simulate(lambda simulator: simulator.stream(adapter, chat_body()))
    chunks = chunks_of(adapter, data, piece)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    assert text == " ".join(["Gatehouse", "simulated", "answer", "token"] * 4)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": SIMPLE_INPUT_TOKENS,
        "completion_tokens": 16,
        "total_tokens": SIMPLE_INPUT_TOKENS + 16,
    }
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}


def test_the_decoder_gives_an_event_only_once_its_frame_is_whole():
    adapter = BedrockAdapter()
    data = simulate(lambda simulator: simulator.stream(adapter, chat_body(max_tokens=1)))
    decoder = adapter.event_decoder()
    events = decoder.feed(data[:-1])
    assert [event["type"] for event in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
    ]
    last = decoder.feed(data[-1:])
    assert [event["type"] for event in last] == ["metadata"]
    assert last[0]["usage"]["outputTokens"] == 1


def test_the_stream_reports_usage_without_the_usage_chunk():
    adapter = BedrockAdapter()
    data = simulate(lambda simulator: simulator.stream(adapter, chat_body()))
    decoder, translator = adapter.event_decoder(), adapter.stream_translator("claude", include_usage=False)
    for event in decoder.feed(data):
        translator.feed(event)
    assert translator.finish() == []
    assert (translator.usage.input_tokens, translator.usage.output_tokens, translator.usage.reported) == (
        SIMPLE_INPUT_TOKENS,
        16,
        True,
    )


# Tools -----------------------------------------------------------------------------------------


def test_it_round_trips_a_tool_call():
    adapter = BedrockAdapter()
    question = {"role": "user", "content": "Weather in Paris?"}

    async def scenario(simulator: Simulator) -> tuple[httpx.Response, dict[str, Any], httpx.Response]:
        first = await simulator.chat(adapter, {"messages": [question], "tools": [WEATHER_TOOL]})
        completion, _ = adapter.chat_answer(first.json(), "claude")
        reply = completion["choices"][0]["message"]
        results = [
            {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"} for call in reply["tool_calls"]
        ]
        second = await simulator.chat(adapter, {"messages": [question, reply, *results], "tools": [WEATHER_TOOL]})
        return first, completion, second

    first, completion, second = simulate(scenario)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Gatehouse", "days": 1}
    assert call["id"] == first.json()["output"]["message"]["content"][0]["toolUse"]["toolUseId"]
    tools_tokens = count_tokens(
        json.dumps(converse_request({"messages": [question], "tools": [WEATHER_TOOL]})["toolConfig"]["tools"])
    )
    assert completion["usage"]["prompt_tokens"] == 4 + count_tokens("Weather in Paris?") + tools_tokens
    assert completion["usage"]["completion_tokens"] == count_tokens(json.dumps({"city": "Gatehouse", "days": 1}))
    assert second.status_code == 200, second.text
    final, usage = adapter.chat_answer(second.json(), "claude")
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["choices"][0]["message"]["content"].startswith("Gatehouse simulated")
    expected_input = (4 + count_tokens("Weather in Paris?")) + 4 + (4 + count_tokens("Sunny, 21 C")) + tools_tokens
    assert usage.input_tokens == expected_input


def test_it_calls_the_forced_tool():
    adapter = BedrockAdapter()
    other = {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
    }
    body = chat_body(tools=[WEATHER_TOOL, other], tool_choice={"type": "function", "function": {"name": "get_time"}})
    answer = simulate(lambda simulator: simulator.chat(adapter, body))
    completion, _ = adapter.chat_answer(answer.json(), "claude")
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_time",
        "arguments": '{"zone":"Gatehouse"}',
    }


def test_it_streams_a_tool_call():
    adapter = BedrockAdapter()
    data = simulate(
        lambda simulator: simulator.stream(adapter, chat_body(tools=[WEATHER_TOOL], tool_choice="required"))
    )
    chunks = chunks_of(adapter, data, 5)
    calls = [
        chunk["choices"][0]["delta"]["tool_calls"][0]
        for chunk in chunks
        if chunk["choices"] and "tool_calls" in chunk["choices"][0]["delta"]
    ]
    assert calls[0]["id"].startswith("tooluse_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert len(calls) > 2  # the arguments arrive in pieces
    assert {call["index"] for call in calls} == {0}
    assert json.loads("".join(call["function"]["arguments"] for call in calls)) == {"city": "Gatehouse", "days": 1}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == count_tokens(json.dumps({"city": "Gatehouse", "days": 1}))


# JSON mode -------------------------------------------------------------------------------------


def test_json_mode_answers_json_text():
    adapter = BedrockAdapter()
    answer = simulate(lambda simulator: simulator.chat(adapter, chat_body(response_format={"type": "json_object"})))
    completion, _ = adapter.chat_answer(answer.json(), "claude")
    message = completion["choices"][0]["message"]
    assert "tool_calls" not in message
    assert json.loads(message["content"]) == {}
    assert completion["choices"][0]["finish_reason"] == "stop"


def test_json_schema_answers_with_the_schema():
    adapter = BedrockAdapter()
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
    answer = simulate(lambda simulator: simulator.chat(adapter, chat_body(response_format=response_format)))
    completion, usage = adapter.chat_answer(answer.json(), "claude")
    assert json.loads(completion["choices"][0]["message"]["content"]) == example_from_schema(PERSON_SCHEMA)
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert usage.output_tokens == count_tokens(json.dumps(example_from_schema(PERSON_SCHEMA)))


def test_json_schema_streams_as_content():
    adapter = BedrockAdapter()
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
    data = simulate(lambda simulator: simulator.stream(adapter, chat_body(response_format=response_format)))
    chunks = chunks_of(adapter, data, 11)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert not any("tool_calls" in delta for delta in deltas)
    assert json.loads("".join(delta.get("content", "") for delta in deltas)) == example_from_schema(PERSON_SCHEMA)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


# Images ----------------------------------------------------------------------------------------


def test_it_sends_images_and_they_are_counted():
    adapter = BedrockAdapter()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    answer = simulate(lambda simulator: simulator.chat(adapter, {"messages": [{"role": "user", "content": content}]}))
    assert answer.status_code == 200, answer.text
    _, usage = adapter.chat_answer(answer.json(), "claude")
    assert usage.input_tokens == 4 + count_tokens("What is this?") + IMAGE_TOKENS


# Embeddings ------------------------------------------------------------------------------------


def test_it_embeds_with_dimensions():
    adapter = BedrockAdapter()

    async def scenario(simulator: Simulator) -> tuple[Outbound, httpx.Response]:
        body = {"model": "titan", "input": ["Gatehouse embeds this"], "dimensions": 16, "encoding_format": "float"}
        outbound = await adapter.embeddings_request(make_target(model=EMBEDDING_MODEL), body, simulator.fetch)
        return outbound, await simulator.send(outbound)

    outbound, answer = simulate(scenario)
    assert outbound.url.endswith("/model/amazon.titan-embed-text-v2%3A0/invoke")
    assert json.loads(outbound.payload) == {"inputText": "Gatehouse embeds this", "dimensions": 16, "normalize": True}
    assert answer.status_code == 200, answer.text
    result, usage = adapter.embeddings_answer(answer.json(), "titan")
    assert result["data"] == [
        {"object": "embedding", "index": 0, "embedding": embedding_vector("Gatehouse embeds this", 16)}
    ]
    assert result["model"] == "titan"
    tokens = count_tokens("Gatehouse embeds this")
    assert result["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert (usage.input_tokens, usage.output_tokens, usage.reported) == (tokens, 0, True)


def test_it_refuses_more_than_one_embedding_input():
    async def scenario(simulator: Simulator) -> Outbound:
        body = {"input": ["one", "two"]}
        return await BedrockAdapter().embeddings_request(make_target(model=EMBEDDING_MODEL), body, simulator.fetch)

    with pytest.raises(GatewayError) as refused:
        simulate(scenario)
    assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
    assert "'input'" in refused.value.message
    assert "one input per request" in refused.value.message


# Roles -----------------------------------------------------------------------------------------


def test_it_assumes_the_role_and_caches_its_keys():
    adapter = BedrockAdapter()
    target = make_target(role_arn=ROLE)

    async def scenario(simulator: Simulator) -> tuple[list[Outbound], list[httpx.Response], list[str]]:
        outbounds = [await adapter.chat_request(target, chat_body(), False, simulator.fetch) for _ in range(2)]
        answers = [await simulator.send(outbound) for outbound in outbounds]
        return outbounds, answers, simulator.sts_urls

    outbounds, answers, sts_urls = simulate(scenario)
    assert sts_urls == ["https://sts.us-east-1.amazonaws.com/"]
    assert [answer.status_code for answer in answers] == [200, 200]
    for outbound in outbounds:
        assert outbound.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIA")
        assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in outbound.headers["Authorization"]
    assert outbounds[0].headers["X-Amz-Security-Token"] == outbounds[1].headers["X-Amz-Security-Token"]


def test_it_renews_role_keys_five_minutes_before_they_expire():
    now = [1_000.0]
    adapter = BedrockAdapter(clock=lambda: now[0])
    target = make_target(role_arn=ROLE)

    async def scenario(simulator: Simulator) -> tuple[int, int, bool, int]:
        keys = await adapter.keys(target, simulator.fetch)
        now[0] = keys.expires_at - 301
        await adapter.keys(target, simulator.fetch)
        before = len(simulator.sts_urls)
        now[0] = keys.expires_at - 299
        renewed = await adapter.keys(target, simulator.fetch)
        now[0] = time.time()  # the renewed keys are good for another hour: no third exchange
        answer = await simulator.send(await adapter.chat_request(target, chat_body(), False, simulator.fetch))
        return before, len(simulator.sts_urls), renewed.access_key_id != keys.access_key_id, answer.status_code

    assert simulate(scenario) == (1, 2, True, 200)


def test_concurrent_requests_share_one_role_exchange():
    adapter = BedrockAdapter()
    target = make_target(role_arn=ROLE)

    async def scenario(simulator: Simulator) -> int:
        await asyncio.gather(*(adapter.chat_request(target, chat_body(), False, simulator.fetch) for _ in range(5)))
        return len(simulator.sts_urls)

    assert simulate(scenario) == 1


def test_a_custom_endpoint_answers_sts_too():
    adapter = BedrockAdapter()
    target = make_target(role_arn=ROLE, base_url="http://bedrock.simulator:8080/")

    async def scenario(simulator: Simulator) -> tuple[Outbound, httpx.Response, list[str]]:
        outbound = await adapter.chat_request(target, chat_body(), False, simulator.fetch)
        return outbound, await simulator.send(outbound), simulator.sts_urls

    outbound, answer, sts_urls = simulate(scenario)
    assert sts_urls == ["http://bedrock.simulator:8080/"]
    assert outbound.url.startswith("http://bedrock.simulator:8080/model/")
    assert outbound.headers["host"] == "bedrock.simulator:8080"
    assert answer.status_code == 200, answer.text


def test_a_refused_role_exchange_is_a_502_without_the_secret():
    async def scenario(simulator: Simulator) -> Outbound:
        return await BedrockAdapter().chat_request(make_target(role_arn=ROLE), chat_body(), False, simulator.fetch)

    with pytest.raises(GatewayError) as failed:
        simulate(scenario, secret="the-simulator-knows-another-secret")
    assert (failed.value.status, failed.value.code) == (502, "upstream_error")
    assert "403: SignatureDoesNotMatch" in failed.value.message
    assert ROLE in failed.value.message
    assert CANARY not in failed.value.message and CANARY not in str(failed.value)


def test_an_unreachable_sts_is_a_502_without_the_secret():
    async def unreachable(url: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
        raise ConnectionRefusedError(f"refused while sending {headers['Authorization']} {CANARY}")

    with pytest.raises(GatewayError) as failed:
        asyncio.run(BedrockAdapter().chat_request(make_target(role_arn=ROLE), chat_body(), False, unreachable))
    assert failed.value.status == 502
    assert "ConnectionRefusedError" in failed.value.message
    assert CANARY not in failed.value.message


# Signatures ------------------------------------------------------------------------------------


def test_a_wrong_secret_is_refused_by_the_simulator():
    adapter = BedrockAdapter()
    answer = simulate(lambda simulator: simulator.chat(adapter, chat_body()), secret="not-the-secret-we-sign-with")
    assert answer.status_code == 403
    assert answer.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")
    message = adapter.error_message(answer.json())
    assert message.startswith("The request signature we calculated does not match")
    assert CANARY not in answer.text


def test_a_changed_payload_is_refused_by_the_simulator():
    async def scenario(simulator: Simulator) -> httpx.Response:
        outbound = await BedrockAdapter().chat_request(make_target(), chat_body(), False, simulator.fetch)
        changed = outbound.payload.replace(b"Hello", b"Jello")
        return await simulator.client.post(outbound.url, headers=outbound.headers, content=changed)

    assert simulate(scenario).status_code == 403


def test_the_simulator_checks_the_scope_of_a_key_it_does_not_know():
    async def scenario(simulator: Simulator) -> tuple[int, int]:
        await simulator.know({ACCESS_KEY: None})
        url = f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{MODEL}/converse"
        payload = json.dumps(converse_request(chat_body())).encode()
        keys = await BedrockAdapter().keys(make_target(), simulator.fetch)
        right = sign(url, payload, keys, "us-east-1", "bedrock", "application/json")
        wrong_service = sign(url, payload, keys, "us-east-1", "s3", "application/json")
        answers = [
            await simulator.client.post(url, headers=headers, content=payload) for headers in (right, wrong_service)
        ]
        return answers[0].status_code, answers[1].status_code

    assert simulate(scenario) == (200, 403)


def test_the_simulator_refuses_a_region_other_than_the_endpoints():
    target = make_target(region="eu-west-1", base_url="https://bedrock-runtime.us-east-1.amazonaws.com")
    answer = simulate(lambda simulator: simulator.chat(BedrockAdapter(), chat_body(), target))
    assert answer.status_code == 403
    assert "region" in answer.json()["message"]


def test_the_simulator_refuses_a_second_host_header():
    async def scenario(simulator: Simulator) -> httpx.Response:
        outbound = await BedrockAdapter().chat_request(make_target(), chat_body(), False, simulator.fetch)
        headers = [*outbound.headers.items(), ("Host", outbound.headers["host"])]
        return await simulator.client.post(outbound.url, headers=headers, content=outbound.payload)

    answer = simulate(scenario)
    assert answer.status_code == 400
    assert "more than one Host header" in answer.json()["message"]


def test_the_simulator_refuses_an_unsigned_request():
    async def scenario(simulator: Simulator) -> httpx.Response:
        url = f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{MODEL}/converse"
        return await simulator.client.post(url, json=converse_request(chat_body()))

    answer = simulate(scenario)
    assert answer.status_code == 403
    assert "x-amzn-ErrorType" in answer.headers


def test_a_rejected_access_key_is_refused():
    async def scenario(simulator: Simulator) -> httpx.Response:
        await simulator.configure({"rejected_keys": [ACCESS_KEY]})
        return await simulator.chat(BedrockAdapter(), chat_body())

    answer = simulate(scenario)
    assert answer.status_code == 403
    assert answer.headers["x-amzn-ErrorType"].startswith("UnrecognizedClientException")


# Faults and stream errors ----------------------------------------------------------------------


def test_throttling_is_bedrocks_throttling_exception():
    async def scenario(simulator: Simulator) -> httpx.Response:
        await simulator.configure({"models": {MODEL: {"fail_rate": 1, "fail_status": 429, "retry_after": 2}}})
        return await simulator.chat(BedrockAdapter(), chat_body())

    answer = simulate(scenario)
    assert answer.status_code == 429
    assert answer.headers["x-amzn-ErrorType"].startswith("ThrottlingException")
    assert answer.headers["retry-after"] == "2"
    assert BedrockAdapter().error_message(answer.json()) == "Too many requests, please wait before trying again."


def test_a_throttling_frame_is_a_429_with_the_providers_words():
    decoder = EventStreamDecoder()
    with pytest.raises(GatewayError) as failed:
        decoder.feed(exception_frame("throttlingException", "Too many tokens, slow down."))
    assert (failed.value.status, failed.value.code) == (429, "upstream_rate_limited")
    assert "Too many tokens, slow down." in failed.value.message


def test_an_exception_frame_after_events_is_raised_after_them():
    decoder = EventStreamDecoder()
    data = event_frame("messageStart", {"role": "assistant"}) + exception_frame(
        "modelStreamErrorException", "The model stopped."
    )
    assert [event["type"] for event in decoder.feed(data)] == ["messageStart"]
    with pytest.raises(GatewayError) as failed:
        decoder.finish()
    assert failed.value.status == 502
    assert "modelStreamErrorException" in failed.value.message and "The model stopped." in failed.value.message


def test_a_corrupt_frame_is_a_502():
    frame = bytearray(event_frame("messageStop", {"stopReason": "end_turn"}))
    frame[-8] ^= 0xFF  # a payload byte: the message CRC no longer matches
    with pytest.raises(GatewayError) as failed:
        EventStreamDecoder().feed(bytes(frame))
    assert (failed.value.status, failed.value.code) == (502, "upstream_error")


def test_a_stream_cut_mid_frame_is_reported_at_the_end():
    decoder = EventStreamDecoder()
    frame = event_frame("messageStop", {"stopReason": "end_turn"})
    assert decoder.feed(frame[:20]) == []
    with pytest.raises(GatewayError) as failed:
        decoder.finish()
    assert failed.value.status == 502


def test_an_event_payload_that_is_not_json_is_a_502():
    frame = encode_frame({":event-type": "messageStart", ":message-type": "event"}, b"not json")
    with pytest.raises(GatewayError):
        EventStreamDecoder().feed(frame)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
    ],
)
def test_stop_reasons_become_finish_reasons(stop_reason, finish):
    translator = BedrockAdapter().stream_translator("claude", include_usage=False)
    chunks = translator.feed({"type": "messageStop", "stopReason": stop_reason})
    assert chunks[-1]["choices"][0]["finish_reason"] == finish
    document = {"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": stop_reason}
    completion, _ = BedrockAdapter().chat_answer(document, "claude")
    assert completion["choices"][0]["finish_reason"] == finish


# Through the gateway's own HTTP client ---------------------------------------------------------


def test_a_signed_stream_survives_the_gateways_http_client(provider_simulator):
    """Over a socket with gateway/http_client.py, which writes Host itself from the URL: the
    Outbound's `host` is left out (same value), and the signature still holds."""
    access_key = "AKIAGATEHOUSEHTTP002"
    httpx.post(f"{provider_simulator.url}/_sim/aws/keys", json={access_key: CANARY}, timeout=5)
    adapter = BedrockAdapter()
    target = make_target(base_url=provider_simulator.url, access_key_id=access_key)

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        client = HttpClient()
        try:
            outbound = await adapter.chat_request(target, chat_body(), True, no_sts)
            headers = {name: value for name, value in outbound.headers.items() if name.lower() != "host"}
            answer = await client.request(
                "POST",
                outbound.url,
                headers=headers,
                body=outbound.payload,
                connect_timeout=5,
                answer_timeout=5,
                total_timeout=10,
            )
            decoder, translator = adapter.event_decoder(), adapter.stream_translator("claude", True)
            chunks: list[dict[str, Any]] = []
            while data := await answer.read_chunk():
                for event in decoder.feed(data):
                    chunks.extend(translator.feed(event))
            decoder.finish()
            answer.release()
            return answer.status, chunks + translator.finish()
        finally:
            await client.close()

    status, chunks = asyncio.run(scenario())
    assert status == 200
    assert chunks[-1]["usage"]["total_tokens"] == SIMPLE_INPUT_TOKENS + 16

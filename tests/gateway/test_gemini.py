"""The Gemini API and Vertex AI adapters (gateway/gemini.py) end to end against the provider
simulator's Google wire formats (gateway/simulator/gemini.py), served in-process."""

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import CredentialConfig, DeploymentConfig
from gateway.errors import GatewayError
from gateway.gemini import GeminiAdapter, VertexAdapter, chat_completion, chat_payload
from gateway.providers import Outbound, Target
from gateway.simulator.app import create_app
from gateway.simulator.behaviour import IMAGE_TOKENS, completion_words, count_tokens, embedding_vector
from gateway.simulator.behaviour import example_from_schema as example

SIM = "http://sim"
MODEL = "gemini-2.5-flash"
EMBEDDING_MODEL = "gemini-embedding-001"
GEMINI_KEY = "AIzaSy-canary-0123456789-gemini-key"  # a canary: must never show in an error
CLIENT_EMAIL = "gatehouse@canary-project.iam.gserviceaccount.com"
WORDS = completion_words(16)
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n pretend pixels").decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}},
    },
}

_PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_KEY_PEM = _PRIVATE_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


def service_account(token_uri: str = f"{SIM}/_sim/google/token", **changes: Any) -> str:
    document = {
        "type": "service_account",
        "project_id": "canary-project",
        "private_key_id": "0123456789abcdef",
        "private_key": PRIVATE_KEY_PEM,
        "client_email": CLIENT_EMAIL,
        "token_uri": token_uri,
        **changes,
    }
    return json.dumps(document)


def credential(provider: str, credential_id: str = "cred-1", region: str = "") -> CredentialConfig:
    return CredentialConfig(
        id=credential_id,
        org_id="org-1",
        provider=provider,
        base_url=SIM,
        azure_endpoint="",
        azure_api_version="",
        team_ids=(),
        sealed_api_key="sealed",
        region=region,
    )


def deployment(model: str = MODEL, max_output_tokens: int = 1000) -> DeploymentConfig:
    return DeploymentConfig(
        id="dep-1",
        org_id="org-1",
        credential_id="cred-1",
        upstream_model=model,
        max_output_tokens=max_output_tokens,
        prices=(),
    )


def gemini_target(model: str = MODEL, key: str = GEMINI_KEY) -> Target:
    return Target(credential("gemini"), deployment(model), key)


def vertex_target(model: str = MODEL, credential_id: str = "cred-1", secret: str | None = None) -> Target:
    return Target(
        credential("vertex_ai", credential_id, region="europe-west4"), deployment(model), secret or service_account()
    )


def assert_no_secret(message: str) -> None:
    assert GEMINI_KEY not in message
    assert "PRIVATE KEY" not in message
    for line in PRIVATE_KEY_PEM.splitlines()[1:-1]:
        assert line[:24] not in message


class Simulator:
    """The simulator app behind an in-process client; `fetch` is the adapters' Fetcher."""

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url=SIM)

    async def fetch(self, url: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
        response = await self.client.post(url, headers=headers, content=payload)
        return response.status_code, response.content

    async def send(self, outbound: Outbound) -> httpx.Response:
        headers = {**outbound.headers, "Content-Type": "application/json"}
        return await self.client.post(outbound.url, headers=headers, content=outbound.payload, params=outbound.params)

    async def chat(self, adapter: Any, target: Target, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        response = await self.send(await adapter.chat_request(target, body, False, self.fetch))
        assert response.status_code == 200, response.text
        return adapter.chat_answer(response.json(), "my-alias")

    async def stream(
        self, adapter: Any, target: Target, body: dict[str, Any], include_usage: bool = True
    ) -> tuple[list[dict[str, Any]], Any]:
        response = await self.send(await adapter.chat_request(target, {**body, "stream": True}, True, self.fetch))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        translator = adapter.stream_translator("my-alias", include_usage)
        chunks = []
        for line in response.text.splitlines():
            if line.startswith("data:"):
                chunks += translator.feed(json.loads(line[5:]))
        return chunks + translator.finish(), translator

    async def embed(self, adapter: Any, target: Target, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        response = await self.send(await adapter.embeddings_request(target, body, self.fetch))
        assert response.status_code == 200, response.text
        return adapter.embeddings_answer(response.json(), "my-embeddings")

    async def configure(self, **body: Any) -> None:
        await self.client.post("/_sim/config", json=body)

    async def stats(self) -> dict[str, int]:
        return (await self.client.get("/_sim/stats")).json()


def play(scenario: Callable[[Simulator], Awaitable[None]]) -> None:
    async def main() -> None:
        simulator = Simulator()
        try:
            await scenario(simulator)
        finally:
            await simulator.client.aclose()

    asyncio.run(main())


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def text_of(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in chunks
        if chunk["choices"] and chunk["choices"][0]["index"] == index
    )


def finishes(chunks: list[dict[str, Any]]) -> dict[int, str]:
    return {
        chunk["choices"][0]["index"]: chunk["choices"][0]["finish_reason"]
        for chunk in chunks
        if chunk["choices"] and chunk["choices"][0]["finish_reason"]
    }


# Chat ----------------------------------------------------------------------------------------


def test_a_chat_answers_with_the_simulated_text_and_the_simulators_token_counts():
    async def scenario(sim: Simulator) -> None:
        body = {"model": "my-alias", "messages": [{"role": "system", "content": "Be terse."}, user("Say hello")]}
        completion, usage = await sim.chat(GeminiAdapter(), gemini_target(), body)
        assert completion["object"] == "chat.completion"
        assert completion["model"] == "my-alias"
        assert completion["choices"][0]["message"] == {"role": "assistant", "content": " ".join(WORDS)}
        assert completion["choices"][0]["finish_reason"] == "stop"
        # System text without the 4 a message costs, then one user message.
        expected_input = count_tokens("Be terse.") + 4 + count_tokens("Say hello")
        assert (usage.input_tokens, usage.output_tokens, usage.reported) == (expected_input, len(WORDS), True)
        assert completion["usage"] == {
            "prompt_tokens": expected_input,
            "completion_tokens": len(WORDS),
            "total_tokens": expected_input + len(WORDS),
        }

    play(scenario)


def test_the_gemini_api_is_called_with_the_key_in_its_header_at_the_models_generate_content_url():
    async def scenario(sim: Simulator) -> None:
        outbound = await GeminiAdapter().chat_request(gemini_target(), {"messages": [user("hi")]}, False, sim.fetch)
        assert outbound.url == f"{SIM}/v1beta/models/{MODEL}:generateContent"
        assert outbound.headers == {"x-goog-api-key": GEMINI_KEY}
        assert outbound.params is None
        streamed = await GeminiAdapter().chat_request(gemini_target(), {"messages": [user("hi")]}, True, sim.fetch)
        assert streamed.url == f"{SIM}/v1beta/models/{MODEL}:streamGenerateContent"
        assert streamed.params == {"alt": "sse"}

    play(scenario)


def test_max_tokens_caps_the_answer_and_is_itself_capped_by_the_deployment():
    async def scenario(sim: Simulator) -> None:
        completion, usage = await sim.chat(
            GeminiAdapter(), gemini_target(), {"messages": [user("hi")], "max_tokens": 5}
        )
        assert completion["choices"][0]["message"]["content"] == " ".join(WORDS[:5])
        assert usage.output_tokens == 5

    play(scenario)
    capped = chat_payload({"messages": [user("hi")], "max_completion_tokens": 50_000}, 1000, "Gemini")
    assert capped["generationConfig"]["maxOutputTokens"] == 1000
    unasked = chat_payload({"messages": [user("hi")]}, 700, "Gemini")
    assert unasked["generationConfig"]["maxOutputTokens"] == 700


def test_a_rejected_key_comes_back_as_googles_401_without_the_key():
    async def scenario(sim: Simulator) -> None:
        await sim.configure(rejected_keys=[GEMINI_KEY])
        adapter = GeminiAdapter()
        response = await sim.send(
            await adapter.chat_request(gemini_target(), {"messages": [user("hi")]}, False, sim.fetch)
        )
        assert response.status_code == 401
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"
        message = adapter.error_message(response.json())
        assert message
        assert_no_secret(message)

    play(scenario)


def test_simulated_failures_come_in_googles_error_shape_with_retry_after():
    async def scenario(sim: Simulator) -> None:
        await sim.configure(models={MODEL: {"fail_rate": 1.0, "fail_status": 429, "retry_after": 2}})
        adapter = GeminiAdapter()
        response = await sim.send(
            await adapter.chat_request(gemini_target(), {"messages": [user("hi")]}, False, sim.fetch)
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"] == {
            "code": 429,
            "message": "Simulated upstream failure.",
            "status": "RESOURCE_EXHAUSTED",
        }
        assert adapter.error_message(response.json()) == "Simulated upstream failure."
        assert (await sim.stats())[MODEL] == 1

    play(scenario)


def test_error_message_reads_googles_error_shapes():
    adapter = GeminiAdapter()
    assert adapter.error_message({"error": {"code": 400, "message": "Bad.", "status": "INVALID_ARGUMENT"}}) == "Bad."
    assert adapter.error_message([{"error": {"code": 500, "message": "Oops.", "status": "INTERNAL"}}]) == "Oops."
    assert (
        adapter.error_message({"error": "invalid_grant", "error_description": "Bad JWT."}) == "invalid_grant: Bad JWT."
    )
    assert adapter.error_message("not json") == ""


def test_the_model_list_answers_a_credential_test_with_a_key_and_refuses_one_without():
    async def scenario(sim: Simulator) -> None:
        listed = await sim.client.get("/v1beta/models", headers={"x-goog-api-key": GEMINI_KEY})
        assert listed.status_code == 200
        assert f"models/{MODEL}" in [model["name"] for model in listed.json()["models"]]
        by_query = await sim.client.get("/v1beta/models", params={"key": GEMINI_KEY})
        assert by_query.status_code == 200
        anonymous = await sim.client.get("/v1beta/models")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["status"] == "UNAUTHENTICATED"

    play(scenario)


# Streams ---------------------------------------------------------------------------------------


def test_a_stream_relays_the_text_in_chunks_and_ends_with_the_reported_usage():
    async def scenario(sim: Simulator) -> None:
        await sim.configure(models={MODEL: {"tokens_per_second": 1000}})
        chunks, translator = await sim.stream(GeminiAdapter(), gemini_target(), {"messages": [user("Stream it")]})
        assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
        assert len({chunk["id"] for chunk in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert text_of(chunks) == " ".join(WORDS)
        assert (
            len([chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["delta"].get("content")]) == 16
        )
        assert finishes(chunks) == {0: "stop"}
        expected_input = 4 + count_tokens("Stream it")
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": expected_input,
            "completion_tokens": 16,
            "total_tokens": expected_input + 16,
        }
        assert (translator.usage.input_tokens, translator.usage.output_tokens) == (expected_input, 16)
        assert translator.usage.reported

    play(scenario)


def test_a_stream_without_include_usage_sends_no_usage_chunk_but_keeps_the_usage():
    async def scenario(sim: Simulator) -> None:
        chunks, translator = await sim.stream(
            GeminiAdapter(), gemini_target(), {"messages": [user("hi")]}, include_usage=False
        )
        assert all(chunk["choices"] for chunk in chunks)
        assert translator.usage.output_tokens == 16
        assert translator.usage.reported

    play(scenario)


def test_a_stream_of_n_candidates_keeps_each_choice_apart():
    async def scenario(sim: Simulator) -> None:
        body = {"messages": [user("two please")], "n": 2, "max_tokens": 3}
        chunks, translator = await sim.stream(GeminiAdapter(), gemini_target(), body)
        assert text_of(chunks, 0) == text_of(chunks, 1) == " ".join(WORDS[:3])
        assert finishes(chunks) == {0: "stop", 1: "stop"}
        assert translator.usage.output_tokens == 6

    play(scenario)


# Tools -----------------------------------------------------------------------------------------


def test_tools_round_trip_a_call_and_its_result():
    async def scenario(sim: Simulator) -> None:
        adapter = GeminiAdapter()
        messages: list[dict[str, Any]] = [user("Weather in Paris?")]
        completion, usage = await sim.chat(adapter, gemini_target(), {"messages": messages, "tools": [WEATHER]})
        choice = completion["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_")
        assert call["type"] == "function"
        assert call["function"]["name"] == "get_weather"
        arguments = json.loads(call["function"]["arguments"])
        assert arguments == example(WEATHER["function"]["parameters"]) == {"city": "Gatehouse", "days": 1}
        assert usage.output_tokens == count_tokens(json.dumps(arguments))
        assert call["extra_content"]["google"]["thought_signature"]  # Gemini 3 wants it back next turn

        messages += [choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"}]
        answer, _ = await sim.chat(adapter, gemini_target(), {"messages": messages, "tools": [WEATHER]})
        assert answer["choices"][0]["message"]["content"] == " ".join(WORDS)
        assert answer["choices"][0]["finish_reason"] == "stop"

    play(scenario)


def test_a_tool_call_replayed_without_its_signature_still_goes_through():
    """Clients that rebuild the history drop extra_content: Google's documented skip value is sent."""

    async def scenario(sim: Simulator) -> None:
        messages = [
            user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ]
        answer, _ = await sim.chat(GeminiAdapter(), gemini_target(), {"messages": messages, "tools": [WEATHER]})
        assert answer["choices"][0]["message"]["content"] == " ".join(WORDS)

    play(scenario)


def test_the_simulator_refuses_a_function_call_turn_without_a_thought_signature():
    async def scenario(sim: Simulator) -> None:
        payload = {
            "contents": [
                {"role": "user", "parts": [{"text": "Weather?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "x"}}}],
                },
            ]
        }
        response = await sim.client.post(
            f"/v1beta/models/{MODEL}:generateContent", json=payload, headers={"x-goog-api-key": GEMINI_KEY}
        )
        assert response.status_code == 400
        assert "thought_signature" in response.json()["error"]["message"]

    play(scenario)


def test_the_simulator_refuses_a_function_response_that_answers_no_call():
    async def scenario(sim: Simulator) -> None:
        payload = {
            "contents": [
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "x"}}}]}
            ]
        }
        response = await sim.client.post(
            f"/v1beta/models/{MODEL}:generateContent", json=payload, headers={"x-goog-api-key": GEMINI_KEY}
        )
        assert response.status_code == 400
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"

    play(scenario)


def test_results_of_parallel_calls_travel_in_one_user_turn():
    messages = [
        user("Weather and time?"),
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "Snow"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "12:00"}]},
    ]
    payload = chat_payload({"messages": messages, "tools": [WEATHER, TIME]}, 1000, "Gemini")
    model_turn, answers = payload["contents"][1], payload["contents"][2]
    assert [part["functionCall"]["name"] for part in model_turn["parts"]] == ["get_weather", "get_time"]
    assert model_turn["parts"][0]["functionCall"]["args"] == {"city": "Oslo"}
    assert answers == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"content": "Snow"}}},
            {"functionResponse": {"name": "get_time", "response": {"content": "12:00"}}},
        ],
    }


def test_a_tool_result_for_an_unknown_call_is_a_400():
    messages = [user("hi"), {"role": "tool", "tool_call_id": "call_nowhere", "content": "x"}]
    with pytest.raises(GatewayError) as refused:
        chat_payload({"messages": messages}, 1000, "Gemini")
    assert refused.value.status == 400
    assert "call_nowhere" in refused.value.message


def test_a_forced_tool_choice_calls_that_function():
    async def scenario(sim: Simulator) -> None:
        body = {
            "messages": [user("What time is it?")],
            "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        }
        completion, _ = await sim.chat(GeminiAdapter(), gemini_target(), body)
        [call] = completion["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "get_time"
        assert json.loads(call["function"]["arguments"]) == {"zone": "UTC"}

    play(scenario)


def test_tool_choice_none_answers_in_text():
    async def scenario(sim: Simulator) -> None:
        body = {"messages": [user("Just talk")], "tools": [WEATHER], "tool_choice": "none"}
        completion, _ = await sim.chat(GeminiAdapter(), gemini_target(), body)
        assert completion["choices"][0]["message"]["content"] == " ".join(WORDS)
        assert "tool_calls" not in completion["choices"][0]["message"]

    play(scenario)


@pytest.mark.parametrize(
    ("tool_choice", "config", "declared"),
    [
        ("auto", None, ["get_weather", "get_time"]),
        ("none", {"mode": "NONE"}, ["get_weather", "get_time"]),
        ("required", {"mode": "ANY"}, ["get_weather", "get_time"]),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            ["get_weather", "get_time"],
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
            {"mode": "ANY"},
            ["get_time"],
        ),
    ],
)
def test_tool_choice_becomes_a_function_calling_config(tool_choice, config, declared):
    payload = chat_payload({"messages": [user("hi")], "tools": [WEATHER, TIME], "tool_choice": tool_choice}, 10, "G")
    assert payload.get("toolConfig") == ({"functionCallingConfig": config} if config else None)
    assert [d["name"] for d in payload["tools"][0]["functionDeclarations"]] == declared
    weather = payload["tools"][0]["functionDeclarations"][0]
    if weather["name"] == "get_weather":
        assert weather == {
            "name": "get_weather",
            "description": "The weather in a city",
            "parametersJsonSchema": WEATHER["function"]["parameters"],
        }


def test_a_streamed_tool_call_arrives_whole_with_its_index():
    async def scenario(sim: Simulator) -> None:
        chunks, translator = await sim.stream(
            GeminiAdapter(), gemini_target(), {"messages": [user("Weather?")], "tools": [WEATHER]}
        )
        calls = [
            call for chunk in chunks if chunk["choices"] for call in chunk["choices"][0]["delta"].get("tool_calls", [])
        ]
        assert len(calls) == 1
        assert calls[0]["index"] == 0
        assert calls[0]["id"].startswith("call_")
        assert calls[0]["function"]["name"] == "get_weather"
        assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Gatehouse", "days": 1}
        assert finishes(chunks) == {0: "tool_calls"}
        assert translator.usage.output_tokens == count_tokens(json.dumps({"city": "Gatehouse", "days": 1}))

    play(scenario)


# Structured output, n, logprobs, images -----------------------------------------------------


def test_json_mode_answers_json_counted_as_the_simulator_counts_it():
    async def scenario(sim: Simulator) -> None:
        body = {"messages": [user("JSON please")], "response_format": {"type": "json_object"}}
        completion, usage = await sim.chat(GeminiAdapter(), gemini_target(), body)
        content = completion["choices"][0]["message"]["content"]
        assert json.loads(content) == {"answer": " ".join(WORDS)}
        assert usage.output_tokens == count_tokens(content)

    play(scenario)


def test_a_json_schema_goes_as_response_json_schema_and_the_answer_follows_it():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "tags"],
        "additionalProperties": False,
    }
    body = {
        "messages": [user("A person")],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    }
    config = chat_payload(body, 100, "Gemini")["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema

    async def scenario(sim: Simulator) -> None:
        completion, _ = await sim.chat(GeminiAdapter(), gemini_target(), body)
        assert json.loads(completion["choices"][0]["message"]["content"]) == example(schema)

    play(scenario)


def test_n_asks_for_that_many_candidates_and_counts_each():
    async def scenario(sim: Simulator) -> None:
        completion, usage = await sim.chat(GeminiAdapter(), gemini_target(), {"messages": [user("three")], "n": 3})
        assert [choice["index"] for choice in completion["choices"]] == [0, 1, 2]
        assert {choice["message"]["content"] for choice in completion["choices"]} == {" ".join(WORDS)}
        assert usage.output_tokens == 3 * len(WORDS)

    play(scenario)


def test_logprobs_come_back_per_token():
    async def scenario(sim: Simulator) -> None:
        body = {"messages": [user("hi")], "max_tokens": 3, "logprobs": True, "top_logprobs": 1}
        completion, _ = await sim.chat(GeminiAdapter(), gemini_target(), body)
        tokens = completion["choices"][0]["logprobs"]["content"]
        assert "".join(token["token"] for token in tokens) == " ".join(WORDS[:3])
        assert tokens[1] == {
            "token": " simulated",
            "logprob": 0.0,
            "bytes": list(b" simulated"),
            "top_logprobs": [{"token": " simulated", "logprob": 0.0, "bytes": list(b" simulated")}],
        }

    play(scenario)


def test_an_image_as_a_data_url_goes_inline_and_counts_image_tokens():
    async def scenario(sim: Simulator) -> None:
        content = [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}", "detail": "high"}},
        ]
        adapter = GeminiAdapter()
        outbound = await adapter.chat_request(gemini_target(), {"messages": [user(content)]}, False, sim.fetch)
        parts = json.loads(outbound.payload)["contents"][0]["parts"]
        assert parts == [{"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": PIXEL}}]
        _, usage = await sim.chat(adapter, gemini_target(), {"messages": [user(content)]})
        assert usage.input_tokens == 4 + count_tokens("What is this?") + IMAGE_TOKENS

    play(scenario)


def test_an_image_url_with_an_image_extension_goes_as_file_data():
    async def scenario(sim: Simulator) -> None:
        content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
        payload = chat_payload({"messages": [user(content)]}, 100, "Gemini")
        assert payload["contents"][0]["parts"] == [
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}
        ]
        _, usage = await sim.chat(GeminiAdapter(), gemini_target(), {"messages": [user(content)]})
        assert usage.input_tokens == 4 + IMAGE_TOKENS

    play(scenario)


def test_an_image_url_that_names_no_image_type_is_refused_with_the_reason():
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/render?id=7"}}]
    with pytest.raises(GatewayError) as refused:
        chat_payload({"messages": [user(content)]}, 100, "Gemini")
    assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
    assert "'image_url'" in refused.value.message
    assert "data: URL" in refused.value.message


# Parameters -------------------------------------------------------------------------------------


def test_sampling_parameters_are_translated():
    body = {
        "messages": [user("hi")],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "reasoning_effort": "low",
        "user": "someone",
        "store": False,
        "parallel_tool_calls": True,
        "logit_bias": {},
        "stream_options": {"include_usage": True},
    }
    assert chat_payload(body, 64, "Gemini")["generationConfig"] == {
        "maxOutputTokens": 64,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END"],
        "seed": 42,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "thinkingConfig": {"thinkingBudget": 1024},
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("logit_bias", {"50256": -100}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("parallel_tool_calls", False),
        ("store", True),
        ("service_tier", "flex"),
        ("verbosity", "low"),
        ("something_new", 1),
    ],
)
def test_a_parameter_google_cannot_honour_is_refused_by_name(name, value):
    async def scenario(sim: Simulator) -> None:
        body = {"messages": [user("hi")], name: value}
        for adapter, target in ((GeminiAdapter(), gemini_target()), (VertexAdapter(), vertex_target())):
            with pytest.raises(GatewayError) as refused:
                await adapter.chat_request(target, body, False, sim.fetch)
            assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
            assert repr(name) in refused.value.message
            assert_no_secret(refused.value.message)
        assert await sim.stats() == {}  # refused before any call, token exchanges included

    play(scenario)


def test_top_logprobs_without_logprobs_is_a_400():
    with pytest.raises(GatewayError) as refused:
        chat_payload({"messages": [user("hi")], "top_logprobs": 2}, 10, "Gemini")
    assert refused.value.status == 400


# Answers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
    ],
)
def test_finish_reasons_are_mapped(reason, finish):
    document = {"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": reason}]}
    completion, _ = chat_completion(document, "a")
    assert completion["choices"][0]["finish_reason"] == finish


def test_thinking_tokens_count_as_completion_tokens_and_thoughts_stay_out_of_the_text():
    document = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "pondering", "thought": True}, {"text": "Answer."}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3, "thoughtsTokenCount": 40},
    }
    completion, usage = chat_completion(document, "a")
    assert completion["choices"][0]["message"]["content"] == "Answer."
    assert (usage.input_tokens, usage.output_tokens, usage.reported) == (10, 43, True)
    assert completion["usage"]["completion_tokens_details"] == {"reasoning_tokens": 40}


def test_a_blocked_prompt_answers_a_content_filter_choice():
    completion, usage = chat_completion(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8}}, "a"
    )
    assert completion["choices"][0]["finish_reason"] == "content_filter"
    assert usage.input_tokens == 8


# Embeddings --------------------------------------------------------------------------------------


def test_gemini_embeddings_have_the_asked_dimensions_and_leave_usage_to_be_estimated():
    async def scenario(sim: Simulator) -> None:
        adapter = GeminiAdapter()
        target = gemini_target(EMBEDDING_MODEL)
        outbound = await adapter.embeddings_request(
            target, {"input": ["first text", "second"], "dimensions": 4}, sim.fetch
        )
        assert outbound.url == f"{SIM}/v1beta/models/{EMBEDDING_MODEL}:batchEmbedContents"
        result, usage = await sim.embed(adapter, target, {"input": ["first text", "second"], "dimensions": 4})
        assert result["object"] == "list"
        assert result["model"] == "my-embeddings"
        assert [item["index"] for item in result["data"]] == [0, 1]
        assert result["data"][0]["embedding"] == embedding_vector("first text", 4)
        assert result["data"][1]["embedding"] == embedding_vector("second", 4)
        assert not usage.reported  # batchEmbedContents reports no tokens

    play(scenario)


def test_base64_embeddings_are_fetched_as_floats_for_the_caller_to_encode():
    async def scenario(sim: Simulator) -> None:
        body = {"input": "hello", "encoding_format": "base64"}
        outbound = await GeminiAdapter().embeddings_request(gemini_target(EMBEDDING_MODEL), body, sim.fetch)
        assert "encoding_format" not in json.loads(outbound.payload)["requests"][0]
        result, _ = await sim.embed(GeminiAdapter(), gemini_target(EMBEDDING_MODEL), body)
        assert result["data"][0]["embedding"] == embedding_vector("hello")

    play(scenario)


def test_vertex_embeddings_report_the_token_count_of_each_text():
    async def scenario(sim: Simulator) -> None:
        adapter = VertexAdapter()
        texts = ["the quick brown fox", "jumps"]
        result, usage = await sim.embed(adapter, vertex_target(EMBEDDING_MODEL), {"input": texts, "dimensions": 3})
        assert [item["embedding"] for item in result["data"]] == [embedding_vector(text, 3) for text in texts]
        expected = sum(count_tokens(text) for text in texts)
        assert (usage.input_tokens, usage.reported) == (expected, True)
        assert result["usage"] == {"prompt_tokens": expected, "total_tokens": expected}

    play(scenario)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": [[1, 2, 3]]}, "input"),
        ({"input": "x", "extra": True}, "extra"),
    ],
)
def test_embeddings_google_cannot_honour_are_refused_by_name(body, named):
    async def scenario(sim: Simulator) -> None:
        with pytest.raises(GatewayError) as refused:
            await GeminiAdapter().embeddings_request(gemini_target(EMBEDDING_MODEL), body, sim.fetch)
        assert (refused.value.status, refused.value.code) == (400, "unsupported_parameter")
        assert repr(named) in refused.value.message

    play(scenario)


# Vertex AI -----------------------------------------------------------------------------------------


def test_vertex_exchanges_a_signed_jwt_for_a_token_and_calls_the_regional_endpoint():
    async def scenario(sim: Simulator) -> None:
        adapter = VertexAdapter()
        outbound = await adapter.chat_request(vertex_target(), {"messages": [user("hi")]}, False, sim.fetch)
        assert outbound.url == (
            f"{SIM}/v1/projects/canary-project/locations/europe-west4/publishers/google/models/{MODEL}:generateContent"
        )
        assert outbound.headers["Authorization"].startswith("Bearer ya29.sim-")
        completion, usage = await sim.chat(adapter, vertex_target(), {"messages": [user("hi")]})
        assert completion["choices"][0]["message"]["content"] == " ".join(WORDS)
        assert usage.input_tokens == 4 + count_tokens("hi")
        assert (await sim.stats())["google-token"] == 1  # two calls, one exchange

    play(scenario)


def test_vertex_streams_like_the_gemini_api():
    async def scenario(sim: Simulator) -> None:
        chunks, translator = await sim.stream(VertexAdapter(), vertex_target(), {"messages": [user("hi")]})
        assert text_of(chunks) == " ".join(WORDS)
        assert translator.usage.reported
        assert translator.usage.output_tokens == 16

    play(scenario)


def test_a_vertex_token_is_renewed_five_minutes_before_it_expires():
    async def scenario(sim: Simulator) -> None:
        start = time.time()  # the simulator checks exp against its own clock
        now = [start]
        adapter = VertexAdapter(clock=lambda: now[0])
        first = await adapter.access_token(vertex_target(), sim.fetch)
        now[0] = start + 3599 - 301
        assert await adapter.access_token(vertex_target(), sim.fetch) == first
        assert (await sim.stats())["google-token"] == 1
        now[0] = start + 3599 - 299
        assert await adapter.access_token(vertex_target(), sim.fetch) != first
        assert (await sim.stats())["google-token"] == 2

    play(scenario)


def test_vertex_tokens_are_kept_per_credential_and_per_secret():
    async def scenario(sim: Simulator) -> None:
        adapter = VertexAdapter()
        await adapter.access_token(vertex_target(credential_id="cred-1"), sim.fetch)
        await adapter.access_token(vertex_target(credential_id="cred-2"), sim.fetch)
        rotated = service_account(private_key_id="rotated")
        await adapter.access_token(vertex_target(credential_id="cred-1", secret=rotated), sim.fetch)
        await adapter.access_token(vertex_target(credential_id="cred-1"), sim.fetch)
        assert (await sim.stats())["google-token"] == 3

    play(scenario)


def test_concurrent_vertex_calls_share_one_token_exchange():
    async def scenario(sim: Simulator) -> None:
        adapter = VertexAdapter()
        tokens = await asyncio.gather(*(adapter.access_token(vertex_target(), sim.fetch) for _ in range(5)))
        assert len(set(tokens)) == 1
        assert (await sim.stats())["google-token"] == 1

    play(scenario)


def test_a_failed_exchange_is_not_kept_and_the_next_call_tries_again():
    async def scenario(sim: Simulator) -> None:
        adapter = VertexAdapter()
        await sim.configure(rejected_keys=[CLIENT_EMAIL])
        with pytest.raises(GatewayError):
            await adapter.access_token(vertex_target(), sim.fetch)
        await sim.configure(rejected_keys=[])
        assert await adapter.access_token(vertex_target(), sim.fetch)
        assert (await sim.stats())["google-token"] == 2

    play(scenario)


def test_one_vertex_adapter_serves_one_event_loop_after_another():
    """The worker keeps one adapter for its life; tests and restarts run new loops."""
    now = [time.time()]
    adapter = VertexAdapter(clock=lambda: now[0])

    async def scenario(sim: Simulator) -> None:
        tokens = await asyncio.gather(*(adapter.access_token(vertex_target(), sim.fetch) for _ in range(3)))
        assert len(set(tokens)) == 1
        assert (await sim.stats())["google-token"] == 1

    play(scenario)
    now[0] += 3600  # expired: callers in the next loop wait together for one new exchange
    play(scenario)


def test_vertex_refuses_a_token_it_did_not_issue():
    async def scenario(sim: Simulator) -> None:
        outbound = await VertexAdapter().chat_request(vertex_target(), {"messages": [user("hi")]}, False, sim.fetch)
        forged = Outbound(outbound.url, {"Authorization": "Bearer ya29.forged"}, outbound.payload)
        response = await sim.send(forged)
        assert response.status_code == 401
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"

    play(scenario)


def test_the_vertex_model_list_answers_a_credential_test_with_an_issued_token_only():
    async def scenario(sim: Simulator) -> None:
        token = await VertexAdapter().access_token(vertex_target(), sim.fetch)
        path = "/v1/projects/canary-project/locations/europe-west4/models"
        listed = await sim.client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200
        forged = await sim.client.get(path, headers={"Authorization": "Bearer ya29.forged"})
        assert forged.status_code == 401

    play(scenario)


def test_a_refused_token_exchange_is_a_502_that_never_shows_the_key():
    async def scenario(sim: Simulator) -> None:
        await sim.configure(rejected_keys=[CLIENT_EMAIL])
        with pytest.raises(GatewayError) as refused:
            await VertexAdapter().chat_request(vertex_target(), {"messages": [user("hi")]}, False, sim.fetch)
        assert (refused.value.status, refused.value.code) == (502, "upstream_error")
        assert "invalid_grant" in refused.value.message
        assert_no_secret(refused.value.message)
        assert_no_secret(str(refused.value))

    play(scenario)


def test_a_token_exchange_at_the_wrong_audience_is_refused():
    async def scenario(sim: Simulator) -> None:
        secret = service_account(token_uri=f"{SIM}/_sim/google/token?elsewhere=1")
        with pytest.raises(GatewayError) as refused:
            await VertexAdapter().access_token(vertex_target(secret=secret), sim.fetch)
        assert refused.value.status == 502
        assert "audience" in refused.value.message

    play(scenario)


@pytest.mark.parametrize(
    "secret",
    [
        "not json at all " + PRIVATE_KEY_PEM,
        service_account(type="authorized_user"),
        service_account(private_key=PRIVATE_KEY_PEM.replace("MII", "XXX")),
        service_account(client_email=""),
        json.dumps({"type": "service_account", "private_key": PRIVATE_KEY_PEM}),
    ],
)
def test_a_broken_service_account_key_is_a_502_that_never_shows_the_key(secret):
    async def scenario(sim: Simulator) -> None:
        with pytest.raises(GatewayError) as refused:
            await VertexAdapter().chat_request(
                vertex_target(secret=secret), {"messages": [user("hi")]}, False, sim.fetch
            )
        assert refused.value.status == 502
        assert "service-account" in refused.value.message
        assert_no_secret(refused.value.message)
        # No chained exception (a parser's, quoting the document) travels with it.
        assert refused.value.__cause__ is None
        assert refused.value.__context__ is None or refused.value.__suppress_context__
        assert await sim.stats() == {}

    play(scenario)


def test_an_unreachable_token_endpoint_is_a_502_naming_no_secret():
    async def unreachable(url: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
        raise ConnectionRefusedError(f"could not connect while sending {payload[:80]!r}")

    async def main() -> None:
        with pytest.raises(GatewayError) as refused:
            await VertexAdapter().access_token(vertex_target(), unreachable)
        assert refused.value.status == 502
        assert "ConnectionRefusedError" in refused.value.message
        assert "assertion" not in refused.value.message

    asyncio.run(main())

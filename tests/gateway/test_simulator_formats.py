"""The provider simulator (gateway/simulator/) speaks the OpenAI, Azure OpenAI and Anthropic
wire formats by the rules in gateway/simulator/behaviour.py.

Each test drives the simulator in-process (ASGI transport, no socket) with the official SDKs
where they can parse the answer, and raw HTTP where the wire itself is the point. Usage numbers
are worked out from the rules: 4 per message + count_tokens(its text) + IMAGE_TOKENS per image,
+ count_tokens(system text), + count_tokens(json.dumps(tools)); output = words, or
count_tokens(the JSON) for a tool call or a JSON answer.
"""

import asyncio
import base64
import json
import struct
from collections.abc import Coroutine
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pydantic
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openai.types.responses import Response as OpenAIResponse

from gateway.simulator.app import create_app
from gateway.simulator.behaviour import IMAGE_TOKENS, count_tokens

KEY = "sk-simulator-test"
TEXT_16 = " ".join(["Gatehouse", "simulated", "answer", "token"] * 4)  # the default answer: 16 words
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "days", "unit"],
}
WEATHER_ARGUMENTS = '{"city": "Gatehouse", "days": 1, "unit": "c"}'  # example_from_schema(WEATHER_PARAMETERS)
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
RESPONSES_TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMETERS, "strict": True},
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}, "strict": True},
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather for a city.", "input_schema": WEATHER_PARAMETERS},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
]
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "rank": {"type": "number"}, "tags": {"type": "array", "items": {}}},
    "required": ["city", "rank", "tags"],
    "additionalProperties": False,
}
IMAGE_URL = "data:image/png;base64,iVBORw0KGgo="


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 10))


@pytest.fixture
def app():
    return create_app()


def raw_client(app, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://simulator",
        headers=headers or {"authorization": f"Bearer {KEY}"},
    )


def openai_client(app) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url="http://simulator/v1", max_retries=0, http_client=raw_client(app))


def anthropic_client(app) -> anthropic.AsyncAnthropic:
    transport = httpx2.ASGITransport(app=app)
    return anthropic.AsyncAnthropic(
        api_key=KEY, base_url="http://simulator", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
    )


def data_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of an SSE body's data lines, without the [DONE] sentinel."""
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


async def configure(app, **body: Any) -> None:
    async with raw_client(app) as client:
        (await client.post("/_sim/config", json=body)).raise_for_status()


async def stats(app) -> dict[str, int]:
    async with raw_client(app) as client:
        return (await client.get("/_sim/stats")).json()


# OpenAI chat completions ------------------------------------------------------------------


def test_chat_answers_text_with_usage_by_the_rules(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        )

    completion = run(scenario())
    assert completion.choices[0].message.content == TEXT_16
    assert completion.choices[0].finish_reason == "stop"
    # system: 4 + count_tokens("Be brief.") = 4 + 3; user: 4 + count_tokens("hello there") = 4 + 3
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (14, 16)
    assert completion.usage.total_tokens == 30


def test_chat_max_completion_tokens_caps_the_words(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=3
        )

    completion = run(scenario())
    assert completion.choices[0].message.content == "Gatehouse simulated answer"
    assert completion.usage.completion_tokens == 3


@pytest.mark.parametrize("tool_choice", [None, "auto", "required"])
def test_chat_with_tools_calls_the_first_tool(app, tool_choice):
    async def scenario():
        extra = {"tool_choice": tool_choice} if tool_choice else {}
        return await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], tools=CHAT_TOOLS, **extra
        )

    completion = run(scenario())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", WEATHER_ARGUMENTS)
    # 4 + count_tokens("weather?") = 4 + 2, plus the tools' JSON
    assert completion.usage.prompt_tokens == 6 + count_tokens(json.dumps(CHAT_TOOLS))
    assert completion.usage.completion_tokens == count_tokens(WEATHER_ARGUMENTS) == 12


def test_chat_forced_tool_is_the_one_called(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "time?"}],
            tools=CHAT_TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )

    call = run(scenario()).choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_time", "{}")


def test_chat_tool_choice_none_answers_text(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], tools=CHAT_TOOLS, tool_choice="none"
        )

    completion = run(scenario())
    assert (completion.choices[0].message.content, completion.choices[0].message.tool_calls) == (TEXT_16, None)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 5 + count_tokens(json.dumps(CHAT_TOOLS))


def test_chat_after_a_tool_result_answers_text_and_counts_the_call(app):
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": WEATHER_ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny and warm"},
    ]

    async def scenario():
        return await openai_client(app).chat.completions.create(model="gpt-4o", messages=messages, tools=CHAT_TOOLS)

    completion = run(scenario())
    assert completion.choices[0].message.content == TEXT_16
    assert completion.choices[0].finish_reason == "stop"
    # (4 + 2) + (4 + count_tokens(arguments) = 4 + 12) + (4 + count_tokens("sunny and warm") = 4 + 4)
    assert completion.usage.prompt_tokens == 30 + count_tokens(json.dumps(CHAT_TOOLS))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tool_choice": "auto"}, "only allowed when 'tools' are specified"),
        ({"tools": CHAT_TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
        ({"n": 0}, "'n'"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "json_schema.name"),
    ],
)
def test_chat_refuses_what_openai_refuses(app, extra, message):
    async def scenario():
        await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], **extra
        )

    with pytest.raises(openai.BadRequestError) as refused:
        run(scenario())
    assert message in refused.value.body["message"]


def test_chat_n_gives_n_choices_and_n_times_the_output(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], n=3
        )

    completion = run(scenario())
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert {choice.message.content for choice in completion.choices} == {TEXT_16}
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 48)


def test_chat_n_with_tools_gives_one_call_per_choice(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], tools=CHAT_TOOLS, n=2
        )

    completion = run(scenario())
    ids = {choice.message.tool_calls[0].id for choice in completion.choices}
    assert len(ids) == 2
    assert completion.usage.completion_tokens == 2 * count_tokens(WEATHER_ARGUMENTS)


def test_chat_json_object_answers_an_answer_object(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"}
        )

    completion = run(scenario())
    content = completion.choices[0].message.content
    assert json.loads(content) == {"answer": TEXT_16}
    assert completion.usage.completion_tokens == count_tokens(content) == 37


def test_chat_json_schema_is_parsed_by_the_sdk(app):
    class City(pydantic.BaseModel):
        city: str
        population: int
        coastal: bool

    async def scenario():
        return await openai_client(app).chat.completions.parse(
            model="gpt-4o", messages=[{"role": "user", "content": "a city"}], response_format=City
        )

    completion = run(scenario())
    assert completion.choices[0].message.parsed == City(city="Gatehouse", population=1, coastal=True)
    assert completion.usage.completion_tokens == count_tokens(completion.choices[0].message.content)


def test_chat_json_schema_follows_the_schema_sent(app):
    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "c", "schema": CITY_SCHEMA, "strict": True},
            },
        )

    content = run(scenario()).choices[0].message.content
    assert json.loads(content) == {"city": "Gatehouse", "rank": 1.5, "tags": ["Gatehouse"]}


def test_chat_images_count_image_tokens_each(app):
    content = [
        {"type": "text", "text": "compare these"},
        {"type": "image_url", "image_url": {"url": IMAGE_URL}},
        {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
    ]

    async def scenario():
        return await openai_client(app).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": content}]
        )

    # 4 + count_tokens("compare these") = 4 + 4, + 2 images
    assert run(scenario()).usage.prompt_tokens == 8 + 2 * IMAGE_TOKENS


def test_chat_stream_sends_the_text_and_the_usage_chunk(app):
    async def scenario():
        stream = await openai_client(app).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]

    chunks = run(scenario())
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == TEXT_16
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 16)


def test_chat_stream_without_include_usage_has_no_usage_chunk(app):
    async def scenario():
        async with raw_client(app) as client:
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            return (await client.post("/v1/chat/completions", json=body)).text

    text = run(scenario())
    assert text.endswith("data: [DONE]\n\n")
    assert all("usage" not in chunk for chunk in data_lines(text))


def test_chat_stream_sends_a_tool_call_in_pieces(app):
    async def scenario():
        stream = await openai_client(app).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "weather?"}],
            tools=CHAT_TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]

    chunks = run(scenario())
    calls = [
        chunk.choices[0].delta.tool_calls[0] for chunk in chunks if chunk.choices and chunk.choices[0].delta.tool_calls
    ]
    first, rest = calls[0], calls[1:]
    assert first.id.startswith("call_") and (first.index, first.type) == (0, "function")
    assert (first.function.name, first.function.arguments) == ("get_weather", "")
    assert all(call.id is None and call.function.name is None and call.index == 0 for call in rest)
    assert len(rest) > 1
    assert "".join(call.function.arguments for call in rest) == WEATHER_ARGUMENTS
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == count_tokens(WEATHER_ARGUMENTS)


def test_chat_stream_sends_a_json_answer_in_pieces(app):
    async def scenario():
        stream = await openai_client(app).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]

    chunks = run(scenario())
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) == 37  # four characters a delta, as many as the answer's tokens
    assert json.loads("".join(pieces)) == {"answer": TEXT_16}
    assert chunks[-1].usage.completion_tokens == 37


def test_chat_stream_interleaves_n_choices(app):
    async def scenario():
        stream = await openai_client(app).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            n=2,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]

    chunks = run(scenario())
    indexes = [chunk.choices[0].index for chunk in chunks if chunk.choices]
    assert indexes == [0, 1] * 5  # role, three words, finish: each for choice 0 then choice 1
    for index in (0, 1):
        deltas = [
            chunk.choices[0].delta.content or ""
            for chunk in chunks
            if chunk.choices and chunk.choices[0].index == index
        ]
        assert "".join(deltas) == "Gatehouse simulated answer"
    assert chunks[-1].usage.completion_tokens == 6


def test_chat_azure_deployment_path_answers_tools(app):
    async def scenario():
        client = openai.AsyncAzureOpenAI(
            api_key=KEY,
            azure_endpoint="http://simulator",
            api_version="2024-10-21",
            max_retries=0,
            http_client=raw_client(app),
        )
        return await client.chat.completions.create(
            model="prod-gpt4o", messages=[{"role": "user", "content": "weather?"}], tools=CHAT_TOOLS, n=2
        )

    completion = run(scenario())
    assert [choice.message.tool_calls[0].function.name for choice in completion.choices] == ["get_weather"] * 2
    assert completion.model == "prod-gpt4o"


# Embeddings -------------------------------------------------------------------------------


def test_embeddings_dimensions_set_the_vector_length(app):
    async def scenario():
        client = openai_client(app)
        default = await client.embeddings.create(model="text-embedding-3-small", input="hi", encoding_format="float")
        wide = await client.embeddings.create(
            model="text-embedding-3-small", input=["hi", "there"], dimensions=32, encoding_format="float"
        )
        return default, wide

    default, wide = run(scenario())
    assert len(default.data[0].embedding) == 8
    assert [len(item.embedding) for item in wide.data] == [32, 32]
    assert wide.data[0].embedding[:8] == default.data[0].embedding  # deterministic per text
    assert wide.data[0].embedding != wide.data[1].embedding
    assert wide.usage.prompt_tokens == 3  # count_tokens("hi") + count_tokens("there") = 1 + 2


def test_embeddings_base64_is_little_endian_float32(app):
    async def scenario():
        async with raw_client(app) as client:
            body = {"model": "text-embedding-3-small", "input": "hi", "dimensions": 4}
            floats = (await client.post("/v1/embeddings", json=body)).json()
            packed = (await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
            return floats, packed

    floats, packed = run(scenario())
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert len(raw) == 16
    assert struct.unpack("<4f", raw) == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


def test_embeddings_sdk_decodes_its_default_base64(app):
    async def scenario():
        return await openai_client(app).embeddings.create(model="text-embedding-3-small", input="hi", dimensions=5)

    assert len(run(scenario()).data[0].embedding) == 5


def test_embeddings_count_token_arrays_by_length(app):
    async def scenario():
        async with raw_client(app) as client:
            body = {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]}
            return (await client.post("/v1/embeddings", json=body)).json()

    answer = run(scenario())
    assert len(answer["data"]) == 2
    assert answer["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


@pytest.mark.parametrize("extra", [{"dimensions": 0}, {"dimensions": "8"}, {"encoding_format": "hex"}, {"input": 5}])
def test_embeddings_refuse_bad_parameters(app, extra):
    async def scenario():
        async with raw_client(app) as client:
            body = {"model": "text-embedding-3-small", "input": "hi", **extra}
            return await client.post("/v1/embeddings", json=body)

    answer = run(scenario())
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


# The Responses API ------------------------------------------------------------------------


def test_responses_answer_validates_as_the_sdk_response(app):
    async def scenario():
        async with raw_client(app) as client:
            body = {"model": "gpt-4o", "input": "hello there", "instructions": "Be brief."}
            return (await client.post("/v1/responses", json=body)).json()

    document = run(scenario())
    response = OpenAIResponse.model_validate(document)
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == TEXT_16
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    # input: 4 + count_tokens("hello there") = 7; instructions: count_tokens("Be brief.") = 3
    assert document["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 16,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 26,
    }


def test_responses_max_output_tokens_caps_the_words(app):
    async def scenario():
        return await openai_client(app).responses.create(model="gpt-4o", input="hi", max_output_tokens=2)

    response = run(scenario())
    assert (response.output_text, response.usage.output_tokens) == ("Gatehouse simulated", 2)


def test_responses_items_count_messages_images_calls_and_outputs(app):
    items = [
        {"role": "developer", "content": "Use tools."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "weather here?"},
                {"type": "input_image", "image_url": IMAGE_URL, "detail": "auto"},
            ],
        },
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": WEATHER_ARGUMENTS},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny and warm"},
    ]

    async def scenario():
        return await openai_client(app).responses.create(model="gpt-4o", input=items, tools=RESPONSES_TOOLS)

    response = run(scenario())
    assert response.output_text == TEXT_16  # a text answer after the tool's output
    # (4 + 3) + (4 + 4 + image) + (4 + 12) + (4 + 4), plus the tools' JSON
    expected = 39 + IMAGE_TOKENS + count_tokens(json.dumps(RESPONSES_TOOLS))
    assert response.usage.input_tokens == expected


@pytest.mark.parametrize(
    ("tool_choice", "name", "arguments"),
    [
        (None, "get_weather", WEATHER_ARGUMENTS),
        ("required", "get_weather", WEATHER_ARGUMENTS),
        ({"type": "function", "name": "get_time"}, "get_time", "{}"),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_time"}]},
            "get_time",
            "{}",
        ),
    ],
)
def test_responses_with_tools_give_a_function_call(app, tool_choice, name, arguments):
    async def scenario():
        extra = {"tool_choice": tool_choice} if tool_choice else {}
        return await openai_client(app).responses.create(
            model="gpt-4o", input="weather?", tools=RESPONSES_TOOLS, **extra
        )

    response = run(scenario())
    [call] = response.output
    assert call.type == "function_call" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert (call.name, call.arguments, call.status) == (name, arguments, "completed")
    assert response.usage.input_tokens == 6 + count_tokens(json.dumps(RESPONSES_TOOLS))
    assert response.usage.output_tokens == count_tokens(arguments)


def test_responses_tool_choice_none_answers_text(app):
    async def scenario():
        return await openai_client(app).responses.create(
            model="gpt-4o", input="hi", tools=RESPONSES_TOOLS, tool_choice="none"
        )

    assert run(scenario()).output_text == TEXT_16


def test_responses_json_object_format(app):
    async def scenario():
        return await openai_client(app).responses.create(
            model="gpt-4o", input="hi", text={"format": {"type": "json_object"}}
        )

    response = run(scenario())
    assert json.loads(response.output_text) == {"answer": TEXT_16}
    assert response.usage.output_tokens == 37


def test_responses_json_schema_is_parsed_by_the_sdk(app):
    class City(pydantic.BaseModel):
        city: str
        population: int

    async def scenario():
        return await openai_client(app).responses.parse(model="gpt-4o", input="a city", text_format=City)

    response = run(scenario())
    assert response.output_parsed == City(city="Gatehouse", population=1)
    assert response.usage.output_tokens == count_tokens(response.output_text)


def test_responses_stream_sends_the_typed_events_in_order(app):
    async def scenario():
        stream = await openai_client(app).responses.create(model="gpt-4o", input="hi", max_output_tokens=3, stream=True)
        return [event async for event in stream]

    events = run(scenario())
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == (
        "Gatehouse simulated answer"
    )
    assert events[0].response.status == "in_progress" and events[0].response.usage is None
    completed = events[-1].response
    assert completed.output_text == "Gatehouse simulated answer"
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (5, 3)


def test_responses_stream_sends_function_call_arguments_in_pieces(app):
    async def scenario():
        stream = await openai_client(app).responses.create(
            model="gpt-4o", input="weather?", tools=RESPONSES_TOOLS, stream=True
        )
        return [event async for event in stream]

    events = run(scenario())
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[3:-3]) == {"response.function_call_arguments.delta"}
    added = events[2].item
    assert (added.type, added.name, added.arguments, added.status) == (
        "function_call",
        "get_weather",
        "",
        "in_progress",
    )
    deltas = [event for event in events if event.type == "response.function_call_arguments.delta"]
    assert {event.item_id for event in deltas} == {added.id}
    assert "".join(event.delta for event in deltas) == WEATHER_ARGUMENTS == events[-3].arguments
    assert events[-1].response.output[0].arguments == WEATHER_ARGUMENTS
    assert events[-1].response.usage.output_tokens == count_tokens(WEATHER_ARGUMENTS)


def test_responses_refuse_previous_response_id_as_unknown(app):
    async def scenario():
        await openai_client(app).responses.create(model="gpt-4o", input="again", previous_response_id="resp_123")

    with pytest.raises(openai.BadRequestError) as refused:
        run(scenario())
    assert refused.value.code == "previous_response_not_found"
    assert refused.value.param == "previous_response_id"
    assert "resp_123" in refused.value.message


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": RESPONSES_TOOLS, "tool_choice": {"type": "function", "name": "nope"}},
        {"text": {"format": {"type": "json_schema", "name": "x"}}},
        {"input": 5},
        {"tools": [{"type": "function"}]},
    ],
)
def test_responses_refuse_bad_parameters(app, extra):
    async def scenario():
        async with raw_client(app) as client:
            return await client.post("/v1/responses", json={"model": "gpt-4o", "input": "hi", **extra})

    answer = run(scenario())
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/openai/v1/responses", "/openai/responses?api-version=2025-03-01-preview"])
def test_responses_answer_on_the_azure_paths(app, path):
    async def scenario():
        async with raw_client(app, **{"api-key": KEY}) as client:
            return await client.post(path, json={"model": "prod-gpt4o", "input": "hi"})

    answer = run(scenario())
    assert answer.status_code == 200
    assert OpenAIResponse.model_validate(answer.json()).output_text == TEXT_16


# Anthropic Messages -----------------------------------------------------------------------


def test_messages_answer_text_with_usage_by_the_rules(app):
    async def scenario():
        return await anthropic_client(app).messages.create(
            model="claude-sonnet-4",
            max_tokens=100,
            system="Be brief.",
            messages=[{"role": "user", "content": "hello there"}],
        )

    message = run(scenario())
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == TEXT_16
    assert message.stop_reason == "end_turn"
    # 4 + count_tokens("hello there") = 7, + count_tokens("Be brief.") = 3 (no per-message 4 for the system)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 16)


def test_messages_system_as_text_blocks_counts_like_a_string(app):
    async def scenario():
        return await anthropic_client(app).messages.create(
            model="claude-sonnet-4",
            max_tokens=2,
            system=[{"type": "text", "text": "Be brief."}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        )

    message = run(scenario())
    assert (message.content[0].text, message.usage.input_tokens, message.usage.output_tokens) == (
        "Gatehouse simulated",
        10,
        2,
    )


@pytest.mark.parametrize(
    ("tool_choice", "name", "arguments"),
    [
        (None, "get_weather", WEATHER_ARGUMENTS),
        ({"type": "auto"}, "get_weather", WEATHER_ARGUMENTS),
        ({"type": "any"}, "get_weather", WEATHER_ARGUMENTS),
        ({"type": "tool", "name": "get_time"}, "get_time", "{}"),
    ],
)
def test_messages_with_tools_give_a_tool_use_block(app, tool_choice, name, arguments):
    async def scenario():
        extra = {"tool_choice": tool_choice} if tool_choice else {}
        return await anthropic_client(app).messages.create(
            model="claude-sonnet-4",
            max_tokens=100,
            messages=[{"role": "user", "content": "weather?"}],
            tools=ANTHROPIC_TOOLS,
            **extra,
        )

    message = run(scenario())
    [block] = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert (block.name, block.input) == (name, json.loads(arguments))
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 6 + count_tokens(json.dumps(ANTHROPIC_TOOLS))
    assert message.usage.output_tokens == count_tokens(arguments)


def test_messages_tool_choice_none_answers_text(app):
    async def scenario():
        return await anthropic_client(app).messages.create(
            model="claude-sonnet-4",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            tools=ANTHROPIC_TOOLS,
            tool_choice={"type": "none"},
        )

    message = run(scenario())
    assert (message.content[0].type, message.stop_reason) == ("text", "end_turn")


def test_messages_after_a_tool_result_answer_text_and_count_the_round(app):
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": json.loads(WEATHER_ARGUMENTS)}
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny and warm"}]},
    ]

    async def scenario():
        return await anthropic_client(app).messages.create(
            model="claude-sonnet-4", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
        )

    message = run(scenario())
    assert (message.content[0].text, message.stop_reason) == (TEXT_16, "end_turn")
    # (4 + 2) + (4 + count_tokens(json.dumps(input)) = 4 + 12) + (4 + 4), plus the tools' JSON
    assert message.usage.input_tokens == 30 + count_tokens(json.dumps(ANTHROPIC_TOOLS))


def test_messages_images_count_image_tokens_each(app):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    content = [image, {"type": "text", "text": "compare these"}, image]

    async def scenario():
        return await anthropic_client(app).messages.create(
            model="claude-sonnet-4", max_tokens=100, messages=[{"role": "user", "content": content}]
        )

    assert run(scenario()).usage.input_tokens == 8 + 2 * IMAGE_TOKENS


def test_messages_output_config_json_schema_answers_json(app):
    async def scenario():
        return await anthropic_client(app).messages.create(
            model="claude-sonnet-4",
            max_tokens=100,
            messages=[{"role": "user", "content": "a city"}],
            output_config={"format": {"type": "json_schema", "schema": CITY_SCHEMA}},
        )

    message = run(scenario())
    text = message.content[0].text
    assert json.loads(text) == {"city": "Gatehouse", "rank": 1.5, "tags": ["Gatehouse"]}
    assert message.usage.output_tokens == count_tokens(text)


def test_messages_stream_text_through_the_sdk(app):
    async def scenario():
        async with anthropic_client(app).messages.stream(
            model="claude-sonnet-4", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            return pieces, await stream.get_final_message()

    pieces, message = run(scenario())
    assert pieces == ["Gatehouse", " simulated", " answer", " token"]
    assert message.content[0].text == "Gatehouse simulated answer token"
    assert (message.usage.input_tokens, message.usage.output_tokens, message.stop_reason) == (5, 4, "end_turn")


def test_messages_stream_tool_use_as_input_json_deltas(app):
    async def scenario():
        async with raw_client(app, **{"x-api-key": KEY}) as client:
            body = {
                "model": "claude-sonnet-4",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": "weather?"}],
                "tools": ANTHROPIC_TOOLS,
                "stream": True,
            }
            return (await client.post("/v1/messages", json=body)).text

    events = data_lines(run(scenario()))
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    block = events[1]["content_block"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
    assert block["id"].startswith("toolu_")
    deltas = [event["delta"] for event in events if event["type"] == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"input_json_delta"} and len(deltas) > 1
    assert "".join(delta["partial_json"] for delta in deltas) == WEATHER_ARGUMENTS
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"]["output_tokens"] == count_tokens(WEATHER_ARGUMENTS)


def test_messages_stream_tool_use_is_assembled_by_the_sdk(app):
    async def scenario():
        async with anthropic_client(app).messages.stream(
            model="claude-sonnet-4",
            max_tokens=100,
            messages=[{"role": "user", "content": "weather?"}],
            tools=ANTHROPIC_TOOLS,
            tool_choice={"type": "tool", "name": "get_weather"},
        ) as stream:
            return await stream.get_final_message()

    message = run(scenario())
    assert message.content[0].input == json.loads(WEATHER_ARGUMENTS)
    assert message.stop_reason == "tool_use"


def test_count_tokens_matches_the_input_of_the_answer(app):
    request = {
        "model": "claude-sonnet-4",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": ANTHROPIC_TOOLS,
    }

    async def scenario():
        client = anthropic_client(app)
        counted = await client.messages.count_tokens(**request)
        answered = await client.messages.create(max_tokens=10, **request)
        return counted, answered, await stats(app)

    counted, answered, counts = run(scenario())
    assert counted.input_tokens == answered.usage.input_tokens == 9 + count_tokens(json.dumps(ANTHROPIC_TOOLS))
    assert counts["claude-sonnet-4"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field required"),
        ({"max_tokens": 10}, "messages: Field required"),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "any"}},
            "tool_choice",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": ANTHROPIC_TOOLS,
                "tool_choice": {"type": "tool", "name": "nope"},
            },
            "'nope'",
        ),
    ],
)
def test_messages_refuse_in_anthropic_shape(app, body, message):
    async def scenario():
        async with raw_client(app, **{"x-api-key": KEY}) as client:
            return await client.post("/v1/messages", json={"model": "claude-sonnet-4", **body})

    answer = run(scenario())
    assert answer.status_code == 400
    error = answer.json()
    assert (error["type"], error["error"]["type"]) == ("error", "invalid_request_error")
    assert message in error["error"]["message"]


def test_messages_rejected_key_is_an_anthropic_authentication_error(app):
    async def scenario():
        await configure(app, rejected_keys=[KEY])
        await anthropic_client(app).messages.create(
            model="claude-sonnet-4", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    with pytest.raises(anthropic.AuthenticationError) as refused:
        run(scenario())
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit_error"), (529, "overloaded_error"), (500, "api_error")])
def test_messages_faults_come_in_anthropic_shape(app, status, kind):
    async def scenario():
        await configure(app, models={"claude-sonnet-4": {"fail_rate": 1, "fail_status": status, "retry_after": 2}})
        async with raw_client(app, **{"x-api-key": KEY}) as client:
            body = {"model": "claude-sonnet-4", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
            return await client.post("/v1/messages/count_tokens", json=body), await client.post(
                "/v1/messages", json=body
            )

    for answer in run(scenario()):
        assert answer.status_code == status
        assert answer.headers["retry-after"] == "2"
        assert answer.json() == {"type": "error", "error": {"type": kind, "message": "Simulated upstream failure."}}


# Faults and stats on every model route ----------------------------------------------------

ROUTES = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": CHAT_TOOLS, "n": 2}),
    ("/openai/deployments/m/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/embeddings", {"input": "hi", "dimensions": 4}),
    ("/v1/responses", {"input": "hi", "tools": RESPONSES_TOOLS}),
    ("/openai/v1/responses", {"input": "hi"}),
    ("/v1/messages", {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "tools": ANTHROPIC_TOOLS}),
    ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "hi"}]}),
]


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_every_route_applies_the_fault_knobs_and_counts_in_stats(app, path, body):
    async def scenario():
        await configure(app, models={"m": {"fail_rate": 1, "fail_status": 503}})
        async with raw_client(app) as client:
            answer = await client.post(path, json={"model": "m", **body})
        return answer, await stats(app)

    answer, counts = run(scenario())
    assert answer.status_code == 503
    assert counts == {"m": 1, "m:failed": 1}


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_every_route_answers_and_counts_when_no_fault_is_set(app, path, body):
    async def scenario():
        async with raw_client(app) as client:
            answer = await client.post(path, json={"model": "m", **body})
        return answer, await stats(app)

    answer, counts = run(scenario())
    assert answer.status_code == 200
    assert counts == {"m": 1}


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_every_route_refuses_a_missing_key(app, path, body):
    async def scenario():
        async with raw_client(app, accept="application/json") as client:
            return await client.post(path, json={"model": "m", **body})

    assert run(scenario()).status_code == 401


# Hostile values -----------------------------------------------------------------------------

hostile_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=15,
)
ROUTE_FIELDS = [
    "messages",
    "input",
    "tools",
    "tool_choice",
    "n",
    "response_format",
    "text",
    "max_tokens",
    "max_output_tokens",
    "stream",
    "stream_options",
    "system",
    "instructions",
    "output_config",
    "dimensions",
    "encoding_format",
]


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_hostile_values_in_any_field_are_answered_never_with_a_500(app, path, body):
    @hypothesis_settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(st.dictionaries(st.sampled_from(ROUTE_FIELDS), hostile_json, max_size=3))
    def send(changes: dict[str, Any]) -> None:
        async def scenario():
            async with raw_client(app) as client:
                return await client.post(path, json={"model": "m", **body, **changes})

        answer = run(scenario())
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 400:
            assert "error" in answer.json()

    send()

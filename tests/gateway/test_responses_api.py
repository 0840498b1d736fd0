"""The Responses API translation (gateway/responses_api.py): requests to chat completions, chat
answers and chunks back to Response objects and typed events, each checked against the official
openai SDK's own types and stream parser."""

from typing import Any

import httpx2
import openai
import orjson
import pydantic
import pytest
from openai._streaming import SSEDecoder
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from gateway.errors import GatewayError
from gateway.responses_api import NativeMeter, ResponsesStream, from_chat, native_usage, to_chat, translate
from gateway.validation import validate_chat

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def refused(body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        to_chat(body)
    assert caught.value.status == 400
    return caught.value


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet", "input": "Hi", **fields}


# Requests -------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_message():
    chat = to_chat({"model": "claude-sonnet", "input": "Hello there"})
    assert chat == {"model": "claude-sonnet", "messages": [{"role": "user", "content": "Hello there"}]}
    validate_chat(chat)


def test_instructions_become_a_leading_system_message():
    chat = to_chat(body(instructions="Be brief.", input=[{"role": "user", "content": "Hi"}]))
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_message_items_keep_their_roles_and_developer_becomes_system():
    chat = to_chat(
        body(
            input=[
                {"type": "message", "role": "developer", "content": "Rules"},
                {"role": "system", "content": [{"type": "input_text", "text": "More rules"}]},
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hello "}, {"type": "input_text", "text": "you"}],
                },
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi!", "annotations": []}],
                },
            ]
        )
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Rules"},
        {"role": "system", "content": "More rules"},
        {"role": "user", "content": "Hello you"},
        {"role": "assistant", "content": "Hi!"},
    ]
    validate_chat(chat)


def test_images_become_image_url_parts():
    data_url = "data:image/png;base64,iVBORw0KGgo="
    chat = to_chat(
        body(
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
                        {"type": "input_image", "image_url": data_url, "detail": "auto"},
                    ],
                }
            ]
        )
    )
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": data_url, "detail": "auto"}},
    ]


def test_an_image_by_file_id_is_refused():
    error = refused(
        body(input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}])
    )
    assert error.code == "unsupported_parameter"
    assert "input[0].content[0].file_id" in error.message
    assert "image_url" in error.message


def test_an_image_url_that_is_not_a_url_is_invalid():
    error = refused(
        body(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "file:///etc/passwd"}]}])
    )
    assert error.code == "invalid_request"
    assert "input[0].content[0].image_url" in error.message


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_file", "file_id": "file-1"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
def test_file_and_audio_parts_are_refused(part):
    error = refused(body(input=[{"role": "user", "content": [part]}]))
    assert error.code == "unsupported_parameter"
    assert "input[0].content[0]" in error.message
    assert part["type"] in error.message


def test_an_image_outside_a_user_message_is_refused():
    part = {"type": "input_image", "image_url": "https://example.com/a.png"}
    error = refused(body(input=[{"role": "system", "content": [part]}, {"role": "user", "content": "Hi"}]))
    assert "input[0].content[0]" in error.message


def test_function_calls_join_the_assistant_turn_and_outputs_become_tool_messages():
    chat = to_chat(
        body(
            tools=[WEATHER],
            input=[
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Let me look."},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {
                    "type": "function_call",
                    "id": "fc_2",
                    "call_id": "call_2",
                    "name": "get_weather",
                    "arguments": '{"city":"Rome"}',
                    "status": "completed",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "21C"}],
                },
            ],
        )
    )
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
    ]
    validate_chat(chat)


def test_a_function_call_without_text_before_it_is_an_assistant_message_of_its_own():
    chat = to_chat(
        body(
            input=[
                {"role": "user", "content": "x"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            ]
        )
    )
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }


def test_a_function_call_without_a_call_id_is_invalid():
    error = refused(body(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]))
    assert error.code == "invalid_request"
    assert "input[0].call_id" in error.message


def test_an_image_in_a_tool_output_is_refused():
    output = [{"type": "input_image", "image_url": "https://example.com/a.png"}]
    error = refused(body(input=[{"type": "function_call_output", "call_id": "c", "output": output}]))
    assert error.code == "unsupported_parameter"
    assert "input[0].output[0]" in error.message


def test_reasoning_items_are_left_out():
    chat = to_chat(
        body(
            input=[
                {"role": "user", "content": "Hi"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
                {"role": "assistant", "content": "Hello"},
            ]
        )
    )
    assert [message["role"] for message in chat["messages"]] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ({"type": "item_reference", "id": "msg_1"}, "input[0]"),
        ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "web_search_call"),
        ({"type": "computer_call_output", "call_id": "c", "output": {}}, "computer_call_output"),
    ],
)
def test_items_that_need_openai_are_refused(item, named):
    error = refused(body(input=[item]))
    assert error.code == "unsupported_parameter"
    assert named in error.message


def test_function_tools_become_chat_function_tools():
    strict_tool = {**WEATHER, "name": "strict_weather", "strict": True}
    chat = to_chat(body(tools=[WEATHER, strict_tool]))
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
            },
        },
        {
            "type": "function",
            "function": {
                "name": "strict_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        },
    ]


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search"},
        {"type": "web_search_preview"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "linux"},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp"},
        {"type": "image_generation"},
        {"type": "custom", "name": "grammar_tool"},
    ],
)
def test_built_in_tools_are_refused_by_type(tool):
    error = refused(body(tools=[WEATHER, tool]))
    assert error.code == "unsupported_parameter"
    assert "'tools[1]'" in error.message
    assert f"'{tool['type']}'" in error.message


@pytest.mark.parametrize("option", [{"defer_loading": True}, {"output_schema": {"type": "object"}}])
def test_function_options_only_openai_honours_are_refused(option):
    error = refused(body(tools=[{**WEATHER, **option}]))
    assert f"tools[0].{next(iter(option))}" in error.message


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
def test_tool_choice_modes_pass_through(mode):
    chat = to_chat(body(tools=[WEATHER], tool_choice=mode))
    assert chat["tool_choice"] == mode


def test_tool_choice_naming_a_function_is_translated():
    chat = to_chat(body(tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}))
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_tool_choice_naming_an_unknown_function_is_invalid():
    error = refused(body(tools=[WEATHER], tool_choice={"type": "function", "name": "nope"}))
    assert error.code == "invalid_request"
    assert "'nope'" in error.message


def test_allowed_tools_offers_the_model_only_those_functions():
    other = {**WEATHER, "name": "get_time"}
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}
    chat = to_chat(body(tools=[WEATHER, other], tool_choice=choice))
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["get_time"]
    assert chat["tool_choice"] == "required"


def test_a_built_in_tool_choice_is_refused():
    error = refused(body(tools=[WEATHER], tool_choice={"type": "file_search"}))
    assert "'tool_choice'" in error.message
    assert "file_search" in error.message


def test_required_tool_choice_without_tools_is_invalid():
    assert refused(body(tool_choice="required")).code == "invalid_request"


def test_auto_tool_choice_without_tools_sends_nothing():
    assert "tool_choice" not in to_chat(body(tool_choice="auto"))


def test_parallel_tool_calls_is_sent_with_tools_only():
    assert to_chat(body(tools=[WEATHER], parallel_tool_calls=False))["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in to_chat(body(parallel_tool_calls=False))


@pytest.mark.parametrize(
    ("text", "response_format"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}},
            {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}},
        ),
        (
            {"format": {"type": "json_schema", "name": "city", "description": "A city", "schema": {"type": "object"}}},
            {
                "type": "json_schema",
                "json_schema": {"name": "city", "description": "A city", "schema": {"type": "object"}},
            },
        ),
    ],
)
def test_text_format_becomes_response_format(text, response_format):
    assert to_chat(body(text=text)).get("response_format") == response_format


def test_a_json_schema_format_without_a_schema_is_invalid():
    error = refused(body(text={"format": {"type": "json_schema", "name": "x"}}))
    assert "text.format.schema" in error.message


def test_verbosity_is_translated():
    assert to_chat(body(text={"verbosity": "low"}))["verbosity"] == "low"


def test_sampling_and_limits_are_translated():
    chat = to_chat(body(max_output_tokens=64, temperature=0.2, top_p=0.9))
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"]) == (64, 0.2, 0.9)
    validate_chat(chat)


@pytest.mark.parametrize(
    ("field", "value"), [("max_output_tokens", 0), ("max_output_tokens", "10"), ("temperature", "hot"), ("top_p", True)]
)
def test_malformed_sampling_is_invalid(field, value):
    error = refused(body(**{field: value}))
    assert error.code == "invalid_request"
    assert f"'{field}'" in error.message


@pytest.mark.parametrize(
    "name", ["user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier"]
)
def test_parameters_chat_completions_share_keep_their_name(name):
    assert to_chat(body(**{name: "value-1"}))[name] == "value-1"


def test_metadata_and_store_are_accepted_and_not_forwarded():
    chat = to_chat(body(metadata={"team": "search"}, store=True, max_tool_calls=3))
    assert chat.keys() == {"model", "messages"}


def test_too_much_metadata_is_invalid():
    error = refused(body(metadata={f"k{index}": "v" for index in range(17)}))
    assert error.code == "invalid_request"
    assert "'metadata'" in error.message


def test_stream_asks_for_the_usage_chunk():
    chat = to_chat(body(stream=True, stream_options={"include_obfuscation": False}))
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("name", ["previous_response_id", "conversation"])
def test_conversation_state_is_refused_with_the_reason(name):
    error = refused(body(**{name: "resp_123"}))
    assert error.code == "unsupported_parameter"
    assert f"'{name}'" in error.message
    assert "no conversation state" in error.message
    assert "whole conversation" in error.message


def test_reasoning_effort_is_translated_and_an_auto_summary_accepted():
    chat = to_chat(body(reasoning={"effort": "low", "summary": "auto"}))
    assert chat["reasoning_effort"] == "low"


def test_a_detailed_reasoning_summary_is_refused():
    assert "reasoning.summary" in refused(body(reasoning={"summary": "detailed"})).message


def test_include_logprobs_asks_chat_for_logprobs():
    chat = to_chat(body(include=["message.output_text.logprobs", "reasoning.encrypted_content"], top_logprobs=2))
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 2)


def test_include_of_built_in_tool_output_is_refused():
    error = refused(body(include=["file_search_call.results"]))
    assert "'include'" in error.message
    assert "file_search_call.results" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("background", True),
        ("truncation", "auto"),
        ("prompt", {"id": "pmpt_1"}),
        ("prompt_cache_options", {"ttl": "12h"}),
        ("context_management", [{"type": "compaction"}]),
        ("moderation", {"model": "omni-moderation-latest"}),
        ("image", {"context_compression": "enabled"}),
        ("a_parameter_from_the_future", 1),
    ],
)
def test_parameters_only_openai_honours_are_refused_by_name(field, value):
    error = refused(body(**{field: value}))
    assert error.code == "unsupported_parameter"
    assert f"'{field}'" in error.message


def test_defaults_and_nulls_are_accepted():
    chat = to_chat(
        body(
            background=False,
            truncation="disabled",
            previous_response_id=None,
            conversation=None,
            prompt=None,
            tools=None,
            text=None,
            reasoning=None,
        )
    )
    assert chat == {"model": "claude-sonnet", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("request_body", "named"),
    [
        ({"input": "Hi"}, "'model'"),
        ({"model": "m"}, "'input'"),
        ({"model": "m", "input": 3}, "'input'"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user", "content": 3}]}, "input[0].content"),
    ],
)
def test_malformed_requests_are_invalid(request_body, named):
    error = refused(request_body)
    assert error.code == "invalid_request"
    assert named in error.message


def test_translate_lists_what_only_openai_honours_and_still_gives_a_chat_body():
    chat, refusals = translate(
        body(previous_response_id="resp_1", tools=[WEATHER, {"type": "web_search"}], max_output_tokens=100)
    )
    assert [error.code for error in refusals] == ["unsupported_parameter", "unsupported_parameter"]
    assert "previous_response_id" in refusals[0].message
    assert "tools[1]" in refusals[1].message
    assert chat["max_tokens"] == 100
    validate_chat(chat)


# Answers --------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "claude-sonnet",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def test_a_text_answer_is_a_response_the_sdk_validates():
    document = from_chat(completion({"content": "Hello there"}), "claude-sonnet", body())
    response = Response.model_validate(document)
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "claude-sonnet"
    assert response.output_text == "Hello there"
    (message,) = response.output
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.content[0].annotations == []
    assert response.usage.input_tokens == 12
    assert response.usage.output_tokens == 5
    assert response.usage.total_tokens == 17
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.error is None
    assert response.incomplete_details is None


def test_tool_calls_are_function_call_items():
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
    ]
    document = from_chat(completion({"content": None, "tool_calls": calls}, "tool_calls"), "m", body(tools=[WEATHER]))
    response = Response.model_validate(document)
    assert [item.type for item in response.output] == ["function_call", "function_call"]
    first = response.output[0]
    assert (first.call_id, first.name, first.arguments, first.status) == (
        "call_1",
        "get_weather",
        '{"city":"Paris"}',
        "completed",
    )
    assert first.id.startswith("fc_")
    assert response.output_text == ""


def test_text_and_tool_calls_keep_their_order():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    document = from_chat(completion({"content": "Checking.", "tool_calls": calls}, "tool_calls"), "m", body())
    assert [item["type"] for item in document["output"]] == ["message", "function_call"]


def test_a_length_stop_is_incomplete_for_max_output_tokens():
    document = from_chat(completion({"content": "Hello th"}, "length"), "m", body(max_output_tokens=3))
    response = Response.model_validate(document)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.max_output_tokens == 3


def test_the_response_echoes_the_request():
    request = body(
        instructions="Be brief.",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}},
        temperature=0.3,
        top_p=0.8,
        max_output_tokens=50,
        parallel_tool_calls=False,
        metadata={"team": "search"},
    )
    response = Response.model_validate(from_chat(completion({"content": "{}"}), "m", request))
    assert response.instructions == "Be brief."
    assert response.tools[0].name == "get_weather"
    assert response.tools[0].parameters == WEATHER["parameters"]
    assert response.tool_choice.name == "get_weather"
    assert response.text.format.type == "json_schema"
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0.3, 0.8, 50)
    assert response.parallel_tool_calls is False
    assert response.metadata == {"team": "search"}


def test_defaults_are_echoed_when_the_request_gave_none():
    response = Response.model_validate(from_chat(completion({"content": "x"}), "m", body()))
    assert (response.tool_choice, response.tools, response.parallel_tool_calls) == ("auto", [], True)
    assert response.text.format.type == "text"
    assert response.metadata == {}


def test_cached_and_reasoning_tokens_are_carried():
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    response = Response.model_validate(from_chat(completion({"content": "x"}, usage=usage), "m", body()))
    assert response.usage.input_tokens_details.cached_tokens == 64
    assert response.usage.output_tokens_details.reasoning_tokens == 30


def test_a_refusal_is_a_refusal_part():
    response = Response.model_validate(from_chat(completion({"content": None, "refusal": "I can't."}), "m", body()))
    (part,) = response.output[0].content
    assert (part.type, part.refusal) == ("refusal", "I can't.")


def test_logprobs_appear_when_include_asks():
    choice_logprobs = {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.1,
                "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}],
            }
        ]
    }
    answer = completion({"content": "Hi"})
    answer["choices"][0]["logprobs"] = choice_logprobs
    asked = Response.model_validate(from_chat(answer, "m", body(include=["message.output_text.logprobs"])))
    assert asked.output[0].content[0].logprobs[0].token == "Hi"
    plain = Response.model_validate(from_chat(answer, "m", body()))
    assert plain.output[0].content[0].logprobs == []


def test_the_sdk_parses_a_json_schema_answer_into_its_model():
    from openai.lib._parsing._responses import parse_response

    class City(pydantic.BaseModel):
        name: str

    response = Response.model_validate(from_chat(completion({"content": '{"name": "Paris"}'}), "m", body()))
    parsed = parse_response(text_format=City, input_tools=omit, response=response)
    assert parsed.output_parsed == City(name="Paris")


# Streams --------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


def usage_chunk(prompt: int = 9, completion_tokens: int = 3) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": usage,
    }


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in pieces]
    return [*chunks, chunk({}, finish), usage_chunk()]


def run(chunks: list[dict[str, Any]], request: dict[str, Any] | None = None, close: bool = True) -> bytes:
    stream = ResponsesStream("claude-sonnet", request or body(stream=True))
    data = b"".join(stream.feed(item) for item in chunks)
    return data + (stream.close() if close else b"")


def decode(data: bytes) -> list[dict[str, Any]]:
    """The events as the SDK's SSE decoder reads them, each validated against its SDK type."""
    events = []
    for sse in SSEDecoder().iter_bytes(iter([data])):
        event = sse.json()
        assert sse.event == event["type"]
        EVENTS.validate_python(event)  # strict: a missing or mistyped field fails here
        events.append(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def final_response(data: bytes, request: dict[str, Any]) -> Any:
    """What client.responses.stream(...).get_final_response() returns for these bytes."""
    state: ResponseStreamState[None] = ResponseStreamState(input_tools=request.get("tools") or omit, text_format=omit)
    for event in decode(data):
        state.handle_event(EVENTS.validate_python(event))
    return state._completed_response


def test_a_text_stream_has_the_typed_events_in_order():
    events = decode(run(text_chunks("Hel", "lo")))
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    delta = events[4]
    assert (delta["output_index"], delta["content_index"], delta["delta"]) == (0, 0, "Hel")
    assert delta["item_id"] == events[2]["item"]["id"]
    assert events[6]["text"] == "Hello"
    completed = Response.model_validate(events[-1]["response"])
    assert completed.output_text == "Hello"
    assert (completed.usage.input_tokens, completed.usage.output_tokens, completed.usage.total_tokens) == (9, 3, 12)
    assert completed.id == events[0]["response"]["id"]
    assert events[0]["response"]["status"] == "in_progress"


def test_the_sdk_stream_helper_assembles_the_final_response():
    request = body(stream=True)
    response = final_response(run(text_chunks("Hello", " world")), request)
    assert response.output_text == "Hello world"
    assert response.status == "completed"


def test_a_tool_call_stream_has_argument_events():
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    request = body(stream=True, tools=[WEATHER])
    data = run(chunks, request)
    events = decode(data)
    kinds = [event["type"] for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2]["item"]["type"] == "function_call"
    assert events[2]["item"]["call_id"] == "call_1"
    assert events[7]["arguments"] == '{"city":"Paris"}'
    response = final_response(data, request)
    assert [(item.call_id, item.arguments) for item in response.output] == [
        ("call_1", '{"city":"Paris"}'),
        ("call_2", '{"city":"Rome"}'),
    ]
    assert all(item.status == "completed" for item in response.output)


def test_text_then_a_tool_call_are_two_items():
    chunks = [
        chunk({"content": "Checking."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ]
            }
        ),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    response = final_response(run(chunks), body(stream=True))
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.output_text == "Checking."


def test_a_length_stop_ends_with_response_incomplete():
    events = decode(run(text_chunks("Hel", finish="length")))
    assert events[-1]["type"] == "response.incomplete"
    response = Response.model_validate(events[-1]["response"])
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"


def test_close_finishes_a_stream_without_a_usage_chunk_once():
    stream = ResponsesStream("m", body(stream=True))
    data = b"".join(stream.feed(item) for item in text_chunks("Hi")[:-1])
    closing = stream.close()
    events = decode(data + closing)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["total_tokens"] == 0
    assert stream.close() == b""


def test_close_after_response_completed_adds_nothing():
    stream = ResponsesStream("m", body(stream=True))
    data = b"".join(stream.feed(item) for item in text_chunks("Hi"))
    assert b"response.completed" in data
    assert stream.close() == b""


def test_a_stream_cut_before_its_finish_fails():
    events = decode(run([chunk({"content": "Hel"})]))
    assert [event["type"] for event in events][-2:] == ["response.output_item.done", "response.failed"]
    response = Response.model_validate(events[-1]["response"])
    assert response.status == "failed"
    assert response.error.code == "server_error"


def test_a_refusal_streams_as_refusal_events():
    chunks = [chunk({"refusal": "I can't"}), chunk({"refusal": " help."}), chunk({}, "stop"), usage_chunk()]
    events = decode(run(chunks))
    assert "response.refusal.delta" in [event["type"] for event in events]
    response = Response.model_validate(events[-1]["response"])
    assert response.output[0].content[0].refusal == "I can't help."


def test_logprobs_stream_when_include_asks():
    logprobs = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]}
    chunks = [chunk({"content": "Hi"}, logprobs=logprobs), chunk({}, "stop"), usage_chunk()]
    events = decode(run(chunks, body(stream=True, include=["message.output_text.logprobs"])))
    delta = next(event for event in events if event["type"] == "response.output_text.delta")
    assert delta["logprobs"][0]["token"] == "Hi"
    response = Response.model_validate(events[-1]["response"])
    assert response.output[0].content[0].logprobs[0].logprob == -0.5


def test_the_openai_client_reads_the_stream_end_to_end():
    data = run(text_chunks("Hello", " there"))

    def answer(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/responses"
        return httpx2.Response(200, content=data, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(
        base_url="http://gateway.test/v1",
        api_key="gh_test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    events = list(client.responses.create(model="claude-sonnet", input="Hi", stream=True))
    assert events[-1].type == "response.completed"
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == "Hello there"
    with client.responses.stream(model="claude-sonnet", input="Hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello there"
    assert final.usage.output_tokens == 3


def test_the_openai_client_reads_a_translated_answer():
    document = from_chat(completion({"content": "Hello there"}), "claude-sonnet", body())

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=orjson.dumps(document), headers={"content-type": "application/json"})

    client = openai.OpenAI(
        base_url="http://gateway.test/v1",
        api_key="gh_test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    response = client.responses.create(model="claude-sonnet", input="Hi")
    assert response.output_text == "Hello there"
    assert response.usage.total_tokens == 17


# Native pass-through ----------------------------------------------------------------------------


def test_native_usage_reads_a_response_object():
    usage = native_usage({"id": "resp_1", "usage": {"input_tokens": 30, "output_tokens": 7, "total_tokens": 37}})
    assert (usage.input_tokens, usage.output_tokens, usage.reported) == (30, 7, True)


def test_native_usage_without_usage_is_unreported():
    assert native_usage({"id": "resp_1"}).reported is False


@pytest.mark.parametrize("kind", ["response.completed", "response.incomplete", "response.failed"])
def test_the_native_meter_reads_usage_from_the_terminal_event(kind):
    meter = NativeMeter()
    usage = meter.usage
    meter.feed({"type": "response.created", "response": {"id": "resp_1", "usage": None}})
    meter.feed({"type": "response.output_text.delta", "delta": "Hi"})
    assert usage.reported is False
    meter.feed({"type": kind, "response": {"id": "resp_1", "usage": {"input_tokens": 11, "output_tokens": 4}}})
    assert (usage.input_tokens, usage.output_tokens, usage.reported) == (11, 4, True)
    assert meter.usage is usage

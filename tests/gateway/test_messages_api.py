"""The Anthropic Messages API translation (gateway/messages_api.py): requests to chat completions,
answers and streams back to Anthropic's shapes, errors, native usage. Pure functions: no services.

Where the official `anthropic` SDK can judge a shape, it does: the SDK sends its requests and
parses our answers, streams and errors through an httpx transport that hands it the bytes this
module produced, with the SDK's strict response validation on."""

import json
from collections.abc import Callable

import anthropic
import httpx2
import pytest

from gateway.errors import GatewayError
from gateway.messages_api import (
    IMAGE_TOKEN_ESTIMATE,
    MessagesStream,
    NativeMeter,
    count_tokens_estimate,
    error_document,
    error_event,
    from_chat,
    native_usage,
    to_chat,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def request(**fields) -> dict:
    return {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **fields}


def refusal(body: dict) -> str:
    with pytest.raises(GatewayError) as caught:
        to_chat(body)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_request"
    return caught.value.message


def sdk(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    """The official client, its HTTP answered by `handler` (our bytes), strict about shapes."""
    return anthropic.Anthropic(
        api_key="test-key",
        base_url="http://gatehouse.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        _strict_response_validation=True,
    )


def serving(status: int, content: bytes, content_type: str = "application/json"):
    return lambda _request: httpx2.Response(status, content=content, headers={"content-type": content_type})


def sse_events(data: bytes) -> list[tuple[str, dict]]:
    events = []
    for frame in data.decode().split("\n\n"):
        if frame:
            kind, payload = frame.split("\n")
            assert kind.startswith("event: ") and payload.startswith("data: ")
            document = json.loads(payload.removeprefix("data: "))
            assert document["type"] == kind.removeprefix("event: ")
            events.append((document["type"], document))
    return events


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **extra}],
    }


def usage_chunk(prompt: int, completion: int) -> dict:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def tool_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict:
    call: dict = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call["id"], call["type"] = call_id, "function"
    if name:
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


def run(stream: MessagesStream, chunks: list[dict], close: bool = True) -> bytes:
    data = b"".join(stream.feed(item) for item in chunks)
    return data + (stream.close() if close else b"")


# Validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [None, 7, ""])
def test_it_requires_a_model(model):
    body = request(model=model)
    if model is None:
        del body["model"]
    assert "'model'" in refusal(body)


@pytest.mark.parametrize("max_tokens", [None, 0, -1, 1.5, True, "100", 1_000_001])
def test_it_requires_a_positive_whole_max_tokens(max_tokens):
    body = request(max_tokens=max_tokens)
    if max_tokens is None:
        del body["max_tokens"]
    assert "'max_tokens' must be a whole number" in refusal(body)


@pytest.mark.parametrize("messages", [None, [], "Hi", {"role": "user", "content": "Hi"}])
def test_it_requires_a_non_empty_list_of_messages(messages):
    assert refusal(request(messages=messages)) == "'messages' must be a non-empty list."


@pytest.mark.parametrize("role", ["system", "tool", "developer", None])
def test_it_allows_only_user_and_assistant_roles(role):
    message = refusal(request(messages=[{"role": "user", "content": "Hi"}, {"role": role, "content": "x"}]))
    assert message == "'messages.1.role' must be 'user' or 'assistant'."


def test_it_names_every_unknown_parameter():
    message = refusal(request(n=2, frequency_penalty=0.5))
    assert "'frequency_penalty'" in message
    assert "'n'" in message


def test_it_refuses_a_field_a_message_does_not_have():
    assert "'messages.0.name'" in refusal(request(messages=[{"role": "user", "content": "Hi", "name": "bob"}]))


def test_it_refuses_empty_content_before_the_last_assistant_message():
    messages = [{"role": "user", "content": []}, {"role": "assistant", "content": "x"}]
    assert "'messages.0.content' must not be empty" in refusal(request(messages=messages))


BAD_BLOCKS = [
    ("user", "just text", "'messages.0.content.0' must be a content block"),
    ("user", {"text": "no type"}, "'messages.0.content.0' must be a content block"),
    ("user", {"type": "txt", "text": "typo"}, "'messages.0.content.0.type' is 'txt'"),
    ("user", {"type": "text", "text": 5}, "'messages.0.content.0.text' must be a string"),
    ("user", {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG}}, "media_type"),
    ("user", {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}, ".source.data'"),
    ("user", {"type": "image", "source": {"type": "ftp", "url": "x"}}, "'messages.0.content.0.source'"),
    ("user", {"type": "image"}, "'messages.0.content.0.source'"),
    ("user", {"type": "tool_use", "id": "t1", "name": "f", "input": {}}, "only an assistant message may hold"),
    ("user", {"type": "tool_result", "content": "x"}, "'messages.0.content.0.tool_use_id'"),
    ("user", {"type": "tool_result", "tool_use_id": "t1", "content": 5}, "'messages.0.content.0.content'"),
    ("user", {"type": "tool_result", "tool_use_id": "t1", "is_error": "yes"}, "'messages.0.content.0.is_error'"),
    ("user", {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "tool_use"}]}, "cannot hold"),
    ("assistant", {"type": "tool_result", "tool_use_id": "t1"}, "only a user message may hold"),
    ("assistant", {"type": "tool_use", "id": "t1", "name": "f", "input": "{}"}, "'messages.0.content.0.input'"),
    ("assistant", {"type": "tool_use", "id": "t1", "input": {}}, "'messages.0.content.0.name'"),
    ("assistant", {"type": "tool_use", "name": "f", "input": {}}, "'messages.0.content.0.id'"),
]


@pytest.mark.parametrize(("role", "block", "words"), BAD_BLOCKS)
def test_it_names_a_bad_content_block(role, block, words):
    # An assistant message is followed by a user one: a final assistant message is a prefill.
    messages = [{"role": role, "content": [block]}] + [{"role": "user", "content": "go on"}] * (role == "assistant")
    assert words in refusal(request(messages=messages))


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"system": 5}, "'system'"),
        ({"system": [{"type": "image"}]}, "'system.0' must be a text block"),
        ({"stop_sequences": "END"}, "'stop_sequences' must be a list of strings"),
        ({"temperature": 1.5}, "'temperature' must be a number from 0 to 1"),
        ({"temperature": "hot"}, "'temperature'"),
        ({"top_p": -0.1}, "'top_p'"),
        ({"top_k": -1}, "'top_k'"),
        ({"stream": "yes"}, "'stream' must be true or false"),
        ({"metadata": {"user_id": "u", "team": "x"}}, "'metadata.team'"),
        ({"metadata": {"user_id": 5}}, "'metadata.user_id'"),
        ({"tools": {"name": "f"}}, "'tools' must be a list"),
        ({"tools": [{"input_schema": {}}]}, "'tools.0.name'"),
        ({"tools": [{"name": "f"}]}, "'tools.0.input_schema'"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "required"}}, "'tool_choice.type'"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "auto"}, "'tool_choice.type'"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "tool"}}, "'tool_choice.name'"),
        ({"output_config": {"format": {"type": "json_object"}}}, "'output_config.format.type'"),
        ({"output_format": {"type": "json_schema"}}, "'output_format.schema'"),
        ({"thinking": "on"}, "'thinking.type'"),
        ({"speed": "warp"}, "'speed'"),
        ({"service_tier": "priority"}, "'service_tier'"),
    ],
)
def test_it_names_a_bad_parameter(fields, words):
    assert words in refusal(request(**fields))


def test_it_accepts_what_the_official_sdk_sends():
    sent: list[dict] = []

    def capture(http_request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(http_request.content))
        return httpx2.Response(200, json=from_chat({"choices": [{"message": {"content": "ok"}}]}, "claude-x"))

    sdk(capture).messages.create(
        model="claude-x",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]},
        ],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        thinking={"type": "disabled"},
        service_tier="auto",
        extra_body={"temperature": 0.2},
    )
    chat, anthropic_only = to_chat(sent[0])
    assert anthropic_only == []
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat["tool_choice"] == "auto"
    assert chat["parallel_tool_calls"] is False
    assert chat["temperature"] == 0.2


# Translation --------------------------------------------------------------------------------


def test_it_translates_a_plain_request():
    body = request(
        system="You are terse.",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Count to 3."}]},
        ],
        stop_sequences=["4"],
        temperature=0.5,
        top_p=0.9,
        metadata={"user_id": "user-7"},
    )
    assert to_chat(body) == (
        {
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "Count to 3."}]},
            ],
            "max_tokens": 100,
            "stop": ["4"],
            "temperature": 0.5,
            "top_p": 0.9,
            "user": "user-7",
        },
        [],
    )


def test_it_joins_system_blocks_with_a_blank_line():
    body = request(system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}])
    assert to_chat(body)[0]["messages"][0] == {"role": "system", "content": "One.\n\nTwo."}


def test_it_asks_for_usage_when_streaming():
    chat, _ = to_chat(request(stream=True))
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert "stream" not in to_chat(request(stream=False))[0]


def test_it_translates_images():
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "Which is a cat?"},
    ]
    chat, anthropic_only = to_chat(request(messages=[{"role": "user", "content": content}]))
    assert anthropic_only == []
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "Which is a cat?"},
            ],
        }
    ]


def test_it_translates_a_tool_round_trip():
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "No data"}],
                    "is_error": True,
                },
                {"type": "text", "text": "Summarise."},
            ],
        },
    ]
    chat, anthropic_only = to_chat(request(messages=messages, tools=[WEATHER_TOOL]))
    assert anthropic_only == []
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "The weather in a city.",
            },
        }
    ]
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: No data"},
        {"role": "user", "content": [{"type": "text", "text": "Summarise."}]},
    ]


def test_a_tool_call_without_text_has_null_content():
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
    ]
    chat, _ = to_chat(request(messages=messages))
    assert chat["messages"][1]["content"] is None
    assert chat["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": ""}


def test_a_tool_results_images_follow_the_tool_messages():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    messages = [
        {"role": "user", "content": "Screenshot?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Done"}, image]}
            ],
        },
    ]
    chat, anthropic_only = to_chat(request(messages=messages))
    assert anthropic_only == []
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Done"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Images from the result of tool call toolu_1:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_it_translates_tool_choice(choice, expected):
    chat, _ = to_chat(request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


@pytest.mark.parametrize("kind", ["auto", "any", "tool"])
def test_disabling_parallel_tool_use_turns_off_parallel_tool_calls(kind):
    choice = {"type": kind, "name": "get_weather", "disable_parallel_tool_use": True}
    chat, _ = to_chat(request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert chat["parallel_tool_calls"] is False


def test_tool_choice_without_tools_is_left_out():
    chat, _ = to_chat(request(tool_choice={"type": "auto"}))
    assert "tool_choice" not in chat
    assert "tools" not in chat


def test_a_strict_tool_stays_strict():
    chat, _ = to_chat(request(tools=[{**WEATHER_TOOL, "strict": True, "type": "custom"}]))
    assert chat["tools"][0]["function"]["strict"] is True


@pytest.mark.parametrize("field", ["output_config", "output_format"])
def test_a_json_schema_output_becomes_response_format(field):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    output = {"type": "json_schema", "schema": schema}
    chat, anthropic_only = to_chat(request(**{field: {"format": output} if field == "output_config" else output}))
    assert anthropic_only == []
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_it_refuses_two_output_formats():
    output = {"type": "json_schema", "schema": {"type": "object"}}
    assert "not both" in refusal(request(output_config={"format": output}, output_format=output))


def test_cache_control_and_earlier_thinking_change_nothing():
    cached = {"type": "ephemeral"}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": cached}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "They greet me.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Hello.", "citations": None},
            ],
        },
        {"role": "user", "content": "Bye"},
    ]
    plain = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    tool = {**WEATHER_TOOL, "cache_control": cached}
    hinted = request(messages=messages, tools=[tool], cache_control=cached, service_tier="standard_only")
    assert to_chat(hinted) == to_chat(request(messages=plain, tools=[WEATHER_TOOL]))


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"top_k": 40}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        ({"thinking": {"type": "adaptive"}}, "thinking"),
        ({"speed": "fast"}, "speed"),
        ({"inference_geo": "eu"}, "inference_geo"),
        ({"container": "container_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}]}, "mcp_servers"),
        ({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, "context_management"),
        ({"output_config": {"effort": "low"}}, "output_config.effort"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0 (web_search_20250305)"),
        ({"tools": [WEATHER_TOOL, {"type": "bash_20250124", "name": "bash"}]}, "tools.1 (bash_20250124)"),
        ({"tools": [{**WEATHER_TOOL, "input_examples": [{"city": "Oslo"}]}]}, "tools.0.input_examples"),
        ({"tools": [{**WEATHER_TOOL, "defer_loading": True}]}, "tools.0.defer_loading"),
        ({"tools": [{**WEATHER_TOOL, "allowed_callers": ["code_execution_20250825"]}]}, "tools.0.allowed_callers"),
    ],
)
def test_it_lists_parameters_only_anthropic_honours(fields, name):
    assert to_chat(request(**fields))[1] == [name]


PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
FILE_IMAGE = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}


@pytest.mark.parametrize(
    ("messages", "name"),
    [
        ([{"role": "user", "content": [PDF]}], "messages.0.content.0 (document)"),
        ([{"role": "user", "content": [FILE_IMAGE]}], "messages.0.content.0 (an image from the Files API)"),
        (
            [{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}]}],
            "messages.0.content.0 (search_result)",
        ),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer is ("}],
            "messages.1 (a final assistant message: prefill)",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "server_tool_use", "id": "s1", "name": "web_search"}]},
                {"role": "user", "content": "More"},
            ],
            "messages.1.content.0 (server_tool_use)",
        ),
        (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [PDF]}]}],
            "messages.0.content.0.content.0 (document)",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "f",
                            "input": {},
                            "caller": {"type": "code_execution_20250825", "tool_id": "s1"},
                        }
                    ],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
            ],
            "messages.1.content.0.caller",
        ),
    ],
)
def test_it_lists_content_only_anthropic_takes(messages, name):
    assert to_chat(request(messages=messages))[1] == [name]


def test_a_plain_request_lists_nothing_and_disabled_switches_ask_for_nothing():
    body = request(thinking={"type": "disabled"}, speed="standard", service_tier="auto", mcp_servers=[], container=None)
    assert to_chat(body)[1] == []


# Answers ------------------------------------------------------------------------------------


def completion(message: dict, finish: str = "stop", **choice) -> dict:
    return {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def test_it_answers_a_message():
    assert from_chat(completion({"content": "Hello there."}), "claude-x") == {
        "id": "msg_xyz",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello there."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_it_maps_the_finish_reason(finish, stop_reason):
    assert from_chat(completion({"content": "x"}, finish), "claude-x")["stop_reason"] == stop_reason


def test_a_matched_stop_sequence_is_named_where_the_provider_says_which():
    answer = from_chat(completion({"content": "1 2 3"}, "stop", stop_reason="4"), "claude-x")
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "4")


def test_tool_calls_become_tool_use_blocks():
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    # Some providers finish "stop" after a call; the client must still see tool_use.
    answer = from_chat(completion({"content": "Let me check.", "tool_calls": calls}, "stop"), "claude-x")
    assert answer["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    assert answer["stop_reason"] == "tool_use"


def test_arguments_that_are_not_an_object_are_kept_as_text():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Par'}}]
    answer = from_chat(completion({"content": None, "tool_calls": calls}, "tool_calls"), "claude-x")
    assert answer["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"arguments": '{"city": "Par'}}
    ]


def test_a_refusal_is_the_text():
    answer = from_chat(completion({"content": None, "refusal": "I can't help."}, "content_filter"), "claude-x")
    assert answer["content"] == [{"type": "text", "text": "I can't help."}]
    assert answer["stop_reason"] == "refusal"


def test_the_sdk_accepts_the_message():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    document = from_chat(completion({"content": "Checking.", "tool_calls": calls}, "tool_calls"), "claude-x")
    message = sdk(serving(200, json.dumps(document).encode())).messages.create(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.content[0].type == "text"
    assert message.content[1].type == "tool_use"
    assert message.content[1].input == {"city": "Oslo"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)


# Streams ------------------------------------------------------------------------------------


def test_a_text_stream_makes_anthropics_events():
    stream = MessagesStream("claude-x", input_estimate=9)
    data = run(
        stream,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hello"}),
            chunk({"content": " there"}),
            chunk({}, "stop"),
            usage_chunk(11, 2),
        ],
        close=False,
    )
    events = sse_events(data)
    assert [kind for kind, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_abc"
    assert start["model"] == "claude-x"
    assert start["usage"] == {"input_tokens": 9, "output_tokens": 0}
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[3][1]["delta"] == {"type": "text_delta", "text": " there"}
    assert events[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 11, "output_tokens": 2},
    }
    assert stream.close() == b""


def test_the_stream_waits_for_the_usage_after_the_finish():
    stream = MessagesStream("claude-x", 9)
    data = run(stream, [chunk({"content": "Hi"}), chunk({}, "stop")], close=False)
    assert "message_delta" not in [kind for kind, _ in sse_events(data)]
    assert [kind for kind, _ in sse_events(stream.feed(usage_chunk(11, 1)))] == ["message_delta", "message_stop"]


def test_usage_on_the_finishing_chunk_ends_the_stream():
    stream = MessagesStream("claude-x", 9)
    last = chunk({"content": "Hi"}, "length")
    last["usage"] = {"prompt_tokens": 11, "completion_tokens": 1}
    events = sse_events(run(stream, [last], close=False))
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-1][0] == "message_stop"


def test_usage_before_the_finish_does_not_end_the_stream():
    stream = MessagesStream("claude-x", 9)
    early = chunk({"content": "Hi"})
    early["usage"] = {"prompt_tokens": 11, "completion_tokens": 1}
    data = run(stream, [early, chunk({"content": " you"})], close=False)
    assert "message_stop" not in data.decode()


def test_tool_calls_stream_as_tool_use_blocks():
    stream = MessagesStream("claude-x", 9)
    data = run(
        stream,
        [
            chunk({"content": "Checking."}),
            tool_delta(0, "", call_id="call_1", name="get_weather"),
            tool_delta(0, '{"city":'),
            tool_delta(0, '"Paris"}'),
            tool_delta(1, '{"city":"Oslo"}', call_id="call_2", name="get_weather"),
            chunk({}, "tool_calls"),
            usage_chunk(20, 8),
        ],
        close=False,
    )
    events = sse_events(data)
    starts = [event["content_block"] for kind, event in events if kind == "content_block_start"]
    assert starts == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
    ]
    json_deltas = [
        (e["index"], e["delta"]["partial_json"]) for k, e in events if k == "content_block_delta" and e["index"]
    ]
    assert json_deltas == [(1, '{"city":'), (1, '"Paris"}'), (2, '{"city":"Oslo"}')]
    assert [e["index"] for k, e in events if k == "content_block_stop"] == [0, 1, 2]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_a_tool_call_whose_name_comes_late_opens_with_it():
    stream = MessagesStream("claude-x", 9)
    late = {"index": 0, "id": "call_1", "function": {"arguments": '{"a"'}}
    data = run(stream, [chunk({"tool_calls": [late]}), tool_delta(0, ":1}", name="f"), chunk({}, "tool_calls")])
    events = sse_events(data)
    assert events[1][1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
    assert [e["delta"]["partial_json"] for k, e in events if k == "content_block_delta"] == [
        '{"a":1}'
    ]  # held until the name came


def test_close_ends_a_stream_the_provider_cut_short():
    stream = MessagesStream("claude-x", 9)
    events = sse_events(run(stream, [chunk({"content": "Hello wor"})]))
    assert [kind for kind, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    # No usage came: output tokens are estimated from the 9 characters sent.
    assert events[-2][1]["usage"] == {"input_tokens": 9, "output_tokens": 3}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert stream.close() == b""
    assert stream.feed(chunk({"content": "late"})) == b""


def test_close_on_a_stream_that_sent_nothing_makes_an_empty_message():
    events = sse_events(MessagesStream("claude-x", 4).close())
    assert [kind for kind, _ in events] == ["message_start", "message_delta", "message_stop"]


def test_the_sdk_accumulates_the_stream_into_the_message():
    stream = MessagesStream("claude-x", 9)
    data = run(
        stream,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Let me "}),
            chunk({"content": "check."}),
            tool_delta(0, "", call_id="call_1", name="get_weather"),
            tool_delta(0, '{"city"'),
            tool_delta(0, ': "Oslo"}'),
            chunk({}, "tool_calls"),
            usage_chunk(21, 7),
        ],
    )
    client = sdk(serving(200, data, "text/event-stream"))
    with client.messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
    ) as events:
        texts = list(events.text_stream)
        message = events.get_final_message()
    assert texts == ["Let me ", "check."]
    assert message.id == "msg_abc"
    assert message.model == "claude-x"
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me check."
    assert (message.content[1].id, message.content[1].name) == ("call_1", "get_weather")
    assert message.content[1].input == {"city": "Oslo"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 7)


def test_the_sdk_raises_on_an_error_event():
    stream = MessagesStream("claude-x", 9)
    data = stream.feed(chunk({"content": "Hi"})) + error_event(529, "Overloaded.")
    client = sdk(serving(200, data, "text/event-stream"))
    messages = [{"role": "user", "content": "Hi"}]
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="claude-x", max_tokens=10, messages=messages) as events,
    ):
        events.until_done()
    assert caught.value.type == "overloaded_error"


# Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "exception"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (402, "billing_error", anthropic.PaymentRequiredError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (413, "request_too_large", anthropic.ContentTooLargeError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (502, "api_error", anthropic.InternalServerError),
        (503, "overloaded_error", anthropic.ServiceUnavailableError),
        (504, "timeout_error", anthropic.GatewayTimeoutError),
        (529, "overloaded_error", anthropic.OverloadedError),
        (422, "invalid_request_error", anthropic.UnprocessableEntityError),
        (507, "api_error", anthropic.InternalServerError),
    ],
)
def test_errors_take_anthropics_shape(status, kind, exception):
    document = error_document(status, "Something went wrong.")
    assert document == {"type": "error", "error": {"type": kind, "message": "Something went wrong."}}
    with pytest.raises(exception) as caught:
        sdk(serving(status, json.dumps(document).encode())).messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == status
    assert caught.value.type == kind
    assert caught.value.api_message == "Something went wrong."


# Native usage -------------------------------------------------------------------------------


def test_native_usage_counts_cache_reads_and_writes_as_input():
    message = {
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 1000,
            "output_tokens": 7,
        }
    }
    usage = native_usage(message)
    assert (usage.input_tokens, usage.output_tokens, usage.reported) == (1110, 7, True)


def test_native_usage_of_an_answer_without_usage_is_not_reported():
    assert native_usage({"type": "message"}).reported is False


def test_the_native_meter_reads_start_and_delta():
    meter = NativeMeter()
    meter.feed({"type": "ping"})
    assert meter.usage.reported is False
    start = {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1}
    meter.feed({"type": "message_start", "message": {"id": "msg_1", "usage": start}})
    assert (meter.usage.input_tokens, meter.usage.output_tokens, meter.usage.reported) == (30, 1, True)
    meter.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})
    meter.feed({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}})
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (30, 15)
    # Counts in message_delta are running totals: they replace the start's.
    meter.feed({"type": "message_delta", "delta": {}, "usage": {"input_tokens": 26, "output_tokens": 16}})
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (31, 16)


# count_tokens -------------------------------------------------------------------------------


def test_the_count_estimate_is_about_four_characters_a_token():
    short = count_tokens_estimate(request(messages=[{"role": "user", "content": "Hi"}]))
    long = count_tokens_estimate(request(messages=[{"role": "user", "content": "word " * 400}]))
    assert short >= 1
    assert 500 <= long - short <= 510


def test_the_count_estimate_includes_system_and_tools():
    base = count_tokens_estimate(request())
    assert count_tokens_estimate(request(system="x" * 400)) - base >= 100
    assert count_tokens_estimate(request(tools=[WEATHER_TOOL])) > base


def test_the_count_estimate_prices_an_image_flat():
    big = "A" * 400_000
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": big}}
    with_image = count_tokens_estimate(request(messages=[{"role": "user", "content": [image]}]))
    assert IMAGE_TOKEN_ESTIMATE <= with_image < IMAGE_TOKEN_ESTIMATE + 100

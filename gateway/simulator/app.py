"""An ASGI app speaking the OpenAI, Azure OpenAI and Anthropic wire formats (and, through
gemini.py and bedrock.py, Google's and AWS's), answering by the rules in behaviour.py.

Routes:
- OpenAI chat completions `POST /v1/chat/completions` (Azure: `/openai/deployments/{deployment}/
  chat/completions`, `/openai/v1/chat/completions`): tools + tool_choice (auto, none, required,
  a named function) answered with `tool_calls` and finish_reason "tool_calls"; `n` choices;
  response_format json_object / json_schema; image_url parts; streaming with
  `stream_options.include_usage` (tool calls streamed as delta.tool_calls, n choices
  interleaved by index).
- Embeddings `POST /v1/embeddings` (and the Azure paths): `dimensions`, `encoding_format`
  "float" or "base64" (little-endian float32), strings or token arrays.
- The Responses API `POST /v1/responses` (Azure: `/openai/v1/responses`, `/openai/responses`):
  see openai_responses.py.
- Anthropic Messages `POST /v1/messages`: tools + tool_choice (auto, any, tool, none) answered
  with tool_use blocks and stop_reason "tool_use"; image blocks; system as a string or text
  blocks; `output_config.format` (or `output_format`) json_schema; streaming events with
  input_json_delta for tool_use. `POST /v1/messages/count_tokens` answers {"input_tokens": N}.
  Errors on /v1/messages* come in Anthropic's shape ({"type": "error", "error": {...}}).
- `GET /v1/models`, `GET /openai/models`.

What a message counts for input tokens (behaviour.py's "its text"): its text content (string
content, text parts, tool results' text) and the arguments of its tool calls (OpenAI's
`arguments` text, Anthropic's `json.dumps(input)`), joined by spaces; each image part or image
block adds IMAGE_TOKENS. Tools add count_tokens(json.dumps(tools)) as the request sent them.

Behaviour per model is set with `POST /_sim/config` (JSON: {"models": {"<model or *>": {...}}})
and read back with `GET /_sim/config`; `POST /_sim/reset` restores the defaults. Knobs:
latency_ms (before the first byte), tokens_per_second (stream pace, one delta per token),
completion_tokens, fail_rate (0..1), fail_status, retry_after (seconds, sent with 429), hang
(never answer), break_after (a chat stream's connection drops after that many pieces).
`rejected_keys` lists API keys answered with 401, as a provider does for a bad key. Every
request to a model route (the token counter included) is counted per model in
`GET /_sim/stats`, and every model route applies the knobs before it answers.
"""

import asyncio
import base64
import json
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import bedrock, gemini, openai_responses
from .behaviour import (
    EMBEDDING_DIMENSIONS,
    Answer,
    ModelBehaviour,
    SimContext,
    SimulatorState,
    answer_size,
    completion_words,
    count_tokens,
    embedding_vector,
    error_body,
    message_tokens,
    plan_answer,
)

KNOWN_MODELS = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4", "claude-haiku-4"]
MAX_CHOICES = 128
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class BadRequest(Exception):
    """A request the provider would refuse with 400; the message is the provider's words."""


@dataclass(frozen=True)
class ChatPlan:
    input_tokens: int
    answer: Answer
    choices: int


def sse(payload: dict[str, Any], event: str | None = None) -> str:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(payload)}\n\n"


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def tools_json_tokens(tools: Any) -> int:
    return count_tokens(json.dumps(tools)) if isinstance(tools, list) and tools else 0


# OpenAI chat completions ------------------------------------------------------------------


def chat_message_tokens(message: Any) -> int:
    if not isinstance(message, dict):
        return message_tokens([])
    texts: list[str] = []
    images = 0
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url":
                images += 1
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    elif content is not None:
        texts.append(str(content))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            texts.append(function["arguments"])
    return message_tokens(texts, images)


def chat_tools(body: dict[str, Any]) -> list[tuple[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("Invalid type for 'tools': expected an array.")
    offered: list[tuple[str, Any]] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"Invalid type for 'tools[{index}]': expected an object.")
        if tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"Missing required parameter: 'tools[{index}].function.name'.")
        offered.append((function["name"], function.get("parameters")))
    return offered


def chat_tool_choice(body: dict[str, Any], tools: list[tuple[str, Any]]) -> tuple[bool, str | None]:
    """(tools allowed, the forced tool's name) from tool_choice."""
    choice = body.get("tool_choice")
    if choice is None:
        return True, None
    if not body.get("tools"):
        raise BadRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.")
    if choice == "none":
        return False, None
    if choice in ("auto", "required"):
        return True, None
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest("Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a named function.")
    if function["name"] not in {name for name, _ in tools}:
        raise BadRequest(f"Invalid value for 'tool_choice': no function named {function['name']!r} is in 'tools'.")
    return True, function["name"]


def chat_response_format(body: dict[str, Any]) -> tuple[bool, Any]:
    """(JSON mode, the schema or None) from response_format."""
    response_format = body.get("response_format")
    if response_format is None:
        return False, None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        json_schema = response_format.get("json_schema")
        if not isinstance(json_schema, dict) or not isinstance(json_schema.get("name"), str):
            raise BadRequest("Missing required parameter: 'response_format.json_schema.name'.")
        return True, json_schema.get("schema")
    raise BadRequest("Invalid value for 'response_format.type': expected 'text', 'json_object' or 'json_schema'.")


def chat_plan(body: dict[str, Any], behaviour: ModelBehaviour) -> ChatPlan:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("Missing required parameter: 'messages'.")
    choices = body.get("n", 1)
    if choices is None:
        choices = 1
    if not isinstance(choices, int) or isinstance(choices, bool) or not 1 <= choices <= MAX_CHOICES:
        raise BadRequest(f"Invalid value for 'n': expected an integer from 1 to {MAX_CHOICES}.")
    tools = chat_tools(body)
    tools_allowed, forced = chat_tool_choice(body, tools)
    json_mode, schema = chat_response_format(body)
    last = messages[-1] if messages else None
    words = completion_words(answer_size(body.get("max_tokens") or body.get("max_completion_tokens"), behaviour))
    answer = plan_answer(
        words=words,
        tools=tools,
        tools_allowed=tools_allowed,
        forced_tool=forced,
        after_tool_result=isinstance(last, dict) and last.get("role") in ("tool", "function"),
        json_mode=json_mode,
        schema=schema,
    )
    input_tokens = sum(chat_message_tokens(message) for message in messages) + tools_json_tokens(body.get("tools"))
    return ChatPlan(input_tokens=input_tokens, answer=answer, choices=choices)


def chat_message(answer: Answer, call_id: str) -> dict[str, Any]:
    if not answer.is_tool_call:
        return {"role": "assistant", "content": answer.text}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": answer.tool_name, "arguments": answer.arguments}}
        ],
    }


# Anthropic Messages -----------------------------------------------------------------------


def anthropic_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def as_anthropic_error(response: Response) -> Response:
    """A fault answer (made in OpenAI's shape) in Anthropic's shape, same status and Retry-After."""
    try:
        message = str(json.loads(bytes(response.body))["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = "Simulated upstream failure."
    retry_after = response.headers.get("retry-after")
    return anthropic_error(response.status_code, message, {"retry-after": retry_after} if retry_after else None)


def anthropic_blocks(content: Any, texts: list[str]) -> int:
    """Appends the text of Anthropic content (string or blocks) to `texts`; returns its image count."""
    if isinstance(content, str):
        texts.append(content)
        return 0
    images = 0
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image":
            images += 1
        elif kind == "tool_use":
            texts.append(json.dumps(block.get("input")))
        elif kind == "tool_result":
            images += anthropic_blocks(block.get("content"), texts)
    return images


def anthropic_input_tokens(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or []:
        texts: list[str] = []
        images = anthropic_blocks(message.get("content"), texts) if isinstance(message, dict) else 0
        total += message_tokens(texts, images)
    system: list[str] = []
    anthropic_blocks(body.get("system"), system)
    return total + count_tokens(" ".join(system)) + tools_json_tokens(body.get("tools"))


def anthropic_tools(body: dict[str, Any]) -> list[tuple[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools: Input should be a valid list")
    offered: list[tuple[str, Any]] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequest(f"tools.{index}.name: Field required")
        if tool.get("type", "custom") == "custom":  # server tools (web search, ...) are never called here
            offered.append((tool["name"], tool.get("input_schema")))
    return offered


def anthropic_tool_choice(body: dict[str, Any], tools: list[tuple[str, Any]]) -> tuple[bool, str | None]:
    choice = body.get("tool_choice")
    if choice is None:
        return True, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return False, None
    if kind == "auto":
        return True, None
    if kind not in ("any", "tool"):
        raise BadRequest("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if not tools:
        raise BadRequest("tool_choice: 'any' and 'tool' may only be specified while providing tools")
    if kind == "any":
        return True, None
    name = choice.get("name")
    if not isinstance(name, str) or name not in {tool_name for tool_name, _ in tools}:
        raise BadRequest(f"tool_choice.name: no tool named {name!r} is in tools")
    return True, name


def anthropic_output_format(body: dict[str, Any]) -> tuple[bool, Any]:
    config = body.get("output_config")
    output_format = config.get("format") if isinstance(config, dict) else None
    output_format = output_format if output_format is not None else body.get("output_format")
    if output_format is None:
        return False, None
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        raise BadRequest("output_config.format.type: Input should be 'json_schema'")
    if not isinstance(output_format.get("schema"), dict):
        raise BadRequest("output_config.format.schema: Field required")
    return True, output_format["schema"]


def anthropic_validate(body: dict[str, Any], *, needs_max_tokens: bool) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model: Field required")
    if not isinstance(body.get("messages"), list):
        raise BadRequest("messages: Field required")
    for index, message in enumerate(body["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    max_tokens = body.get("max_tokens")
    if needs_max_tokens and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise BadRequest("max_tokens: Field required" if max_tokens is None else "max_tokens: Input should be >= 1")


def after_tool_result(messages: list[Any]) -> bool:
    last = messages[-1] if messages else None
    content = last.get("content") if isinstance(last, dict) and last.get("role") == "user" else None
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def anthropic_content(answer: Answer, tool_use_id: str) -> list[dict[str, Any]]:
    if answer.is_tool_call:
        return [
            {"type": "tool_use", "id": tool_use_id, "name": answer.tool_name, "input": json.loads(answer.arguments)}
        ]
    return [{"type": "text", "text": answer.text}]


# Embeddings -------------------------------------------------------------------------------


def embedding_items(inputs: Any) -> list[tuple[str, int]]:
    """(the text a vector is made from, its tokens) per input: strings or token arrays."""
    if isinstance(inputs, str):
        return [(inputs, count_tokens(inputs))]
    if isinstance(inputs, list) and inputs and all(isinstance(item, int) for item in inputs):
        return [(str(inputs), len(inputs))]
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("Invalid value for 'input': expected a string, an array of strings or token arrays.")
    items = []
    for item in inputs:
        if isinstance(item, str):
            items.append((item, count_tokens(item)))
        elif isinstance(item, list) and all(isinstance(token, int) for token in item):
            items.append((str(item), len(item)))
        else:
            raise BadRequest("Invalid value for 'input': expected a string, an array of strings or token arrays.")
    return items


def encoded_embedding(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def create_app() -> Starlette:
    state = SimulatorState()
    rng = random.Random(0)  # noqa: S311  (fault injection, not security)

    def api_key(request: Request) -> str:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return (
            request.headers.get("x-api-key")
            or request.headers.get("api-key")
            or request.headers.get("x-goog-api-key")
            or request.query_params.get("key")
            or ""
        )

    async def apply_faults(request: Request, model: str) -> Response | None:
        state.stats[model] += 1
        key = api_key(request)
        if not key or key in state.rejected_keys:
            return JSONResponse(
                error_body(401, "Incorrect API key provided.", "invalid_request_error"), status_code=401
            )
        behaviour = state.behaviour(model)
        if behaviour.hang:
            await asyncio.sleep(3600)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.fail_rate and rng.random() < behaviour.fail_rate:
            state.stats[f"{model}:failed"] += 1
            headers = {"retry-after": str(behaviour.retry_after)} if behaviour.retry_after is not None else {}
            return JSONResponse(
                error_body(behaviour.fail_status, "Simulated upstream failure.", "server_error"),
                status_code=behaviour.fail_status,
                headers=headers,
            )
        return None

    def bad_request(message: str) -> JSONResponse:
        return JSONResponse(error_body(400, message, "invalid_request_error"), status_code=400)

    async def read_json(request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return bad_request("Body is not JSON.")
        if not isinstance(body, dict):
            return bad_request("Body must be an object.")
        return body

    async def chat_completions(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        model = str(body.get("model") or request.path_params.get("deployment") or "")
        fault = await apply_faults(request, model)
        if fault is not None:
            return fault
        behaviour = state.behaviour(model)
        try:
            plan = chat_plan(body, behaviour)
        except BadRequest as error:
            return bad_request(str(error))
        answer = plan.answer
        completion_id = new_id("chatcmpl-")
        created = int(time.time())
        call_ids = [new_id("call_") for _ in range(plan.choices)]
        output_tokens = answer.output_tokens * plan.choices
        usage = {
            "prompt_tokens": plan.input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": plan.input_tokens + output_tokens,
        }
        finish = "tool_calls" if answer.is_tool_call else "stop"
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": index, "message": chat_message(answer, call_ids[index]), "finish_reason": finish}
                        for index in range(plan.choices)
                    ],
                    "usage": usage,
                }
            )
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))

        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
            return sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
                }
            )

        def first_delta(index: int) -> dict[str, Any]:
            if not answer.is_tool_call:
                return {"role": "assistant", "content": ""}
            call = {"index": 0, "id": call_ids[index], "type": "function"}
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**call, "function": {"name": answer.tool_name, "arguments": ""}}],
            }

        def piece_delta(piece: str) -> dict[str, Any]:
            if answer.is_tool_call:
                return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            return {"content": piece}

        async def events() -> AsyncIterator[str]:
            for index in range(plan.choices):
                yield chunk(index, first_delta(index))
            for sent, piece in enumerate(answer.pieces):
                if behaviour.break_after is not None and sent >= behaviour.break_after:
                    raise ConnectionAbortedError("break_after: the stream breaks here")  # the server drops it
                if behaviour.tokens_per_second:
                    await asyncio.sleep(1 / behaviour.tokens_per_second)
                for index in range(plan.choices):
                    yield chunk(index, piece_delta(piece))
            for index in range(plan.choices):
                yield chunk(index, {}, finish)
            if include_usage:
                yield sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        model = str(body.get("model") or request.path_params.get("deployment") or "")
        fault = await apply_faults(request, model)
        if fault is not None:
            return fault
        dimensions = body.get("dimensions")
        if dimensions is None:
            dimensions = EMBEDDING_DIMENSIONS
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 8192:
            return bad_request("Invalid value for 'dimensions': expected an integer from 1 to 8192.")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return bad_request("Invalid value for 'encoding_format': expected 'float' or 'base64'.")
        try:
            items = embedding_items(body.get("input"))
        except BadRequest as error:
            return bad_request(str(error))
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": encoded_embedding(embedding_vector(text, dimensions), encoding),
            }
            for index, (text, _) in enumerate(items)
        ]
        tokens = sum(count for _, count in items)
        return JSONResponse(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )

    async def list_models(request: Request) -> Response:
        fault = await apply_faults(request, "models")
        if fault is not None:
            return fault
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "simulator"} for name in KNOWN_MODELS
                ],
            }
        )

    async def read_anthropic(request: Request) -> tuple[dict[str, Any], str] | Response:
        """The body and model of an Anthropic request, or the error to answer (after the faults)."""
        body = await read_json(request)
        if isinstance(body, Response):
            return as_anthropic_error(body)
        model = str(body.get("model") or "")
        fault = await apply_faults(request, model)
        if fault is not None:
            return as_anthropic_error(fault)
        return body, model

    async def anthropic_count_tokens(request: Request) -> Response:
        read = await read_anthropic(request)
        if isinstance(read, Response):
            return read
        body, _ = read
        try:
            anthropic_validate(body, needs_max_tokens=False)
            anthropic_tool_choice(body, anthropic_tools(body))
        except BadRequest as error:
            return anthropic_error(400, str(error))
        return JSONResponse({"input_tokens": anthropic_input_tokens(body)})

    async def anthropic_messages(request: Request) -> Response:
        read = await read_anthropic(request)
        if isinstance(read, Response):
            return read
        body, model = read
        behaviour = state.behaviour(model)
        try:
            anthropic_validate(body, needs_max_tokens=True)
            tools = anthropic_tools(body)
            tools_allowed, forced = anthropic_tool_choice(body, tools)
            json_mode, schema = anthropic_output_format(body)
        except BadRequest as error:
            return anthropic_error(400, str(error))
        answer = plan_answer(
            words=completion_words(answer_size(body.get("max_tokens"), behaviour)),
            tools=tools,
            tools_allowed=tools_allowed,
            forced_tool=forced,
            after_tool_result=after_tool_result(body["messages"]),
            json_mode=json_mode,
            schema=schema,
        )
        input_tokens = anthropic_input_tokens(body)
        message_id = new_id("msg_")
        tool_use_id = new_id("toolu_")
        stop_reason = "tool_use" if answer.is_tool_call else "end_turn"

        def usage(output_tokens: int) -> dict[str, int]:
            return {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            }

        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": anthropic_content(answer, tool_use_id),
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage(answer.output_tokens),
                }
            )

        def event(name: str, payload: dict[str, Any]) -> str:
            return sse({"type": name, **payload}, event=name)

        async def events() -> AsyncIterator[str]:
            yield event(
                "message_start",
                {
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage(0),
                    },
                },
            )
            if answer.is_tool_call:
                block = {"type": "tool_use", "id": tool_use_id, "name": answer.tool_name, "input": {}}
            else:
                block = {"type": "text", "text": ""}
            yield event("content_block_start", {"index": 0, "content_block": block})
            for piece in answer.pieces:
                if behaviour.tokens_per_second:
                    await asyncio.sleep(1 / behaviour.tokens_per_second)
                if answer.is_tool_call:
                    delta = {"type": "input_json_delta", "partial_json": piece}
                else:
                    delta = {"type": "text_delta", "text": piece}
                yield event("content_block_delta", {"index": 0, "delta": delta})
            yield event("content_block_stop", {"index": 0})
            yield event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": answer.output_tokens},
                },
            )
            yield event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")

    async def get_config(request: Request) -> Response:
        return JSONResponse(
            {
                "models": {name: asdict(b) for name, b in state.models.items()},
                "rejected_keys": sorted(state.rejected_keys),
            }
        )

    async def set_config(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        try:
            for name, knobs in (body.get("models") or {}).items():
                state.models[name] = replace(state.models.get(name, ModelBehaviour()), **knobs)
        except TypeError as error:
            return JSONResponse(error_body(400, f"Unknown knob: {error}", "invalid_request_error"), status_code=400)
        if "rejected_keys" in body:
            state.rejected_keys = set(body["rejected_keys"])
        return await get_config(request)

    async def reset(request: Request) -> Response:
        state.models.clear()
        state.rejected_keys.clear()
        state.stats.clear()
        return JSONResponse({"ok": True})

    async def stats(request: Request) -> Response:
        return JSONResponse(dict(state.stats))

    ctx = SimContext(state=state, apply_faults=apply_faults, api_key=api_key)
    return Starlette(
        routes=gemini.routes(ctx)
        + bedrock.routes(ctx)
        + openai_responses.routes(ctx)
        + [
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/messages", anthropic_messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", anthropic_count_tokens, methods=["POST"]),
            Route("/openai/deployments/{deployment}/chat/completions", chat_completions, methods=["POST"]),
            Route("/openai/deployments/{deployment}/embeddings", embeddings, methods=["POST"]),
            Route("/openai/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/openai/v1/embeddings", embeddings, methods=["POST"]),
            Route("/openai/models", list_models, methods=["GET"]),
            Route("/_sim/config", get_config, methods=["GET"]),
            Route("/_sim/config", set_config, methods=["POST"]),
            Route("/_sim/reset", reset, methods=["POST"]),
            Route("/_sim/stats", stats, methods=["GET"]),
        ]
    )


app = create_app()

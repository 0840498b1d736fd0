"""The OpenAI Responses API of the simulator: `POST /v1/responses` (Azure OpenAI:
`/openai/v1/responses` and `/openai/responses`), answering by the rules in behaviour.py.

- `input` is a string (one user message) or a list of items: messages (role and content as a
  string or input_text / output_text / input_image parts), function_call and
  function_call_output; each item counts as one message (4 + its text + IMAGE_TOKENS per
  image; a function call's text is its arguments, an output's text its output).
  `instructions` counts as system text (count_tokens, no per-message 4); function tools add
  count_tokens(json.dumps(tools)).
- Function tools + tool_choice ("auto", "none", "required", {"type": "function", "name"},
  {"type": "allowed_tools", ...}) give one function_call item, unless the last input item is a
  function_call_output; `text.format` json_object / json_schema gives JSON text;
  `max_output_tokens` caps the words.
- `stream: true` sends the typed events (response.created, response.in_progress,
  response.output_item.added, response.content_part.added, response.output_text.delta/.done,
  response.content_part.done, response.function_call_arguments.delta/.done,
  response.output_item.done, response.completed), numbered by sequence_number.
- Nothing is stored, so `previous_response_id` is refused as OpenAI refuses an unknown id:
  400 previous_response_not_found.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .behaviour import (
    Answer,
    SimContext,
    answer_size,
    completion_words,
    count_tokens,
    message_tokens,
    plan_answer,
)


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}},
        status_code=status,
    )


def content_parts(content: Any, texts: list[str]) -> int:
    """Appends the text of a message's content to `texts`; returns its image count."""
    if isinstance(content, str):
        texts.append(content)
        return 0
    images = 0
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "input_image":
            images += 1
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
    return images


def item_tokens(item: Any) -> int:
    texts: list[str] = []
    images = 0
    if isinstance(item, dict):
        kind = item.get("type", "message")
        if kind == "message":
            images = content_parts(item.get("content"), texts)
        elif kind == "function_call" and isinstance(item.get("arguments"), str):
            texts.append(item["arguments"])
        elif kind == "function_call_output":
            images = content_parts(item.get("output"), texts)
    return message_tokens(texts, images)


def input_items(body: dict[str, Any]) -> list[Any]:
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest("Invalid type for 'input': expected a string or an array of input items.", "input")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid type for 'input[{index}]': expected an object.", f"input[{index}]")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(f"Invalid value for 'input[{index}].role'.", f"input[{index}].role")
        if kind == "function_call_output" and "output" not in item:
            raise InvalidRequest(
                f"Missing required parameter: 'input[{index}].output'.",
                f"input[{index}].output",
                "missing_required_parameter",
            )
    return value


def function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("Invalid type for 'tools': expected an array.", "tools")
    found = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{index}].type'.",
                f"tools[{index}].type",
                "missing_required_parameter",
            )
        if tool["type"] != "function":
            continue
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{index}].name'.",
                f"tools[{index}].name",
                "missing_required_parameter",
            )
        found.append(tool)
    return found


def tool_choice(body: dict[str, Any], names: list[str]) -> tuple[bool, str | None, list[str]]:
    """(tools allowed, the forced tool's name, the tools that may be called)."""
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "required"):
        return True, None, names
    if choice == "none":
        return False, None, names
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str):
        if choice["name"] not in names:
            raise InvalidRequest(
                f"Tool choice '{choice['name']}' not found in 'tools' parameter.", "tool_choice", "invalid_value"
            )
        return True, choice["name"], names
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
        allowed = [tool.get("name") for tool in choice["tools"] if isinstance(tool, dict)]
        return True, None, [name for name in names if name in allowed]
    raise InvalidRequest("Invalid value for 'tool_choice'.", "tool_choice", "invalid_value")


def text_format(body: dict[str, Any]) -> tuple[bool, Any, dict[str, Any]]:
    """(JSON mode, the schema or None, the text config to echo)."""
    text = body.get("text")
    output_format = text.get("format") if isinstance(text, dict) else None
    if output_format is None:
        return False, None, {"format": {"type": "text"}}
    kind = output_format.get("type") if isinstance(output_format, dict) else None
    if kind == "text":
        return False, None, {"format": output_format}
    if kind == "json_object":
        return True, None, {"format": output_format}
    if kind == "json_schema":
        if not isinstance(output_format.get("name"), str) or not isinstance(output_format.get("schema"), dict):
            raise InvalidRequest(
                "Missing required parameter: 'text.format.name' or 'text.format.schema'.",
                "text.format",
                "missing_required_parameter",
            )
        return True, output_format["schema"], {"format": output_format}
    raise InvalidRequest("Invalid value for 'text.format.type'.", "text.format.type", "invalid_value")


def output_item(answer: Answer, item_id: str, call_id: str, done: bool) -> dict[str, Any]:
    status = "completed" if done else "in_progress"
    if answer.is_tool_call:
        return {
            "type": "function_call",
            "id": item_id,
            "call_id": call_id,
            "name": answer.tool_name,
            "arguments": answer.arguments if done else "",
            "status": status,
        }
    content = [output_text(answer.text)] if done else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def routes(ctx: SimContext) -> list[Route]:
    async def create_response(request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return error_response(400, "The body of your request must be a JSON object.")
        model = str(body.get("model") or "")
        fault = await ctx.apply_faults(request, model)
        if fault is not None:
            return fault
        behaviour = ctx.state.behaviour(model)
        previous = body.get("previous_response_id")
        if previous is not None:
            return error_response(
                400,
                f"Previous response with id '{previous}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        if not model:
            return error_response(400, "Missing required parameter: 'model'.", "model", "missing_required_parameter")
        try:
            items = input_items(body)
            tools = function_tools(body)
            tools_allowed, forced, callable_names = tool_choice(body, [tool["name"] for tool in tools])
            json_mode, schema, text_config = text_format(body)
        except InvalidRequest as error:
            return error_response(400, str(error), error.param, error.code)
        last = items[-1] if items else None
        answer = plan_answer(
            words=completion_words(answer_size(body.get("max_output_tokens"), behaviour)),
            tools=[(tool["name"], tool.get("parameters")) for tool in tools if tool["name"] in callable_names],
            tools_allowed=tools_allowed,
            forced_tool=forced,
            after_tool_result=isinstance(last, dict) and last.get("type") == "function_call_output",
            json_mode=json_mode,
            schema=schema,
        )
        instructions = body.get("instructions")
        input_tokens = (
            sum(item_tokens(item) for item in items)
            + (count_tokens(instructions) if isinstance(instructions, str) else 0)
            + (count_tokens(json.dumps(body["tools"])) if body.get("tools") else 0)
        )
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": answer.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + answer.output_tokens,
        }
        response_id = "resp_" + uuid.uuid4().hex
        item_id = ("fc_" if answer.is_tool_call else "msg_") + uuid.uuid4().hex
        call_id = "call_" + uuid.uuid4().hex[:24]
        created = int(time.time())

        def document(done: bool) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "response",
                "created_at": created,
                "status": "completed" if done else "in_progress",
                "completed_at": int(time.time()) if done else None,
                "error": None,
                "incomplete_details": None,
                "instructions": instructions if isinstance(instructions, str) else None,
                "max_output_tokens": body.get("max_output_tokens"),
                "model": model,
                "output": [output_item(answer, item_id, call_id, done=True)] if done else [],
                "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
                "previous_response_id": None,
                "store": body.get("store", True) is not False,
                "temperature": body.get("temperature", 1.0),
                "text": text_config,
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools") or [],
                "top_p": body.get("top_p", 1.0),
                "truncation": body.get("truncation", "disabled"),
                "usage": usage if done else None,
                "user": body.get("user"),
                "metadata": body.get("metadata") or {},
            }

        if not body.get("stream"):
            return JSONResponse(document(done=True))

        async def events() -> AsyncIterator[str]:
            sequence = 0

            def event(kind: str, payload: dict[str, Any]) -> str:
                nonlocal sequence
                data = {"type": kind, "sequence_number": sequence, **payload}
                sequence += 1
                return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

            yield event("response.created", {"response": document(done=False)})
            yield event("response.in_progress", {"response": document(done=False)})
            yield event(
                "response.output_item.added", {"output_index": 0, "item": output_item(answer, item_id, call_id, False)}
            )
            where: dict[str, Any] = {"item_id": item_id, "output_index": 0}
            if answer.is_tool_call:
                for piece in answer.pieces:
                    if behaviour.tokens_per_second:
                        await asyncio.sleep(1 / behaviour.tokens_per_second)
                    yield event("response.function_call_arguments.delta", {**where, "delta": piece})
                yield event("response.function_call_arguments.done", {**where, "arguments": answer.arguments})
            else:
                where = {**where, "content_index": 0}
                yield event("response.content_part.added", {**where, "part": output_text("")})
                for piece in answer.pieces:
                    if behaviour.tokens_per_second:
                        await asyncio.sleep(1 / behaviour.tokens_per_second)
                    yield event("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
                yield event("response.output_text.done", {**where, "text": answer.text, "logprobs": []})
                yield event("response.content_part.done", {**where, "part": output_text(answer.text)})
            yield event(
                "response.output_item.done", {"output_index": 0, "item": output_item(answer, item_id, call_id, True)}
            )
            yield event("response.completed", {"response": document(done=True)})

        return StreamingResponse(events(), media_type="text/event-stream")

    return [
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/openai/v1/responses", create_response, methods=["POST"]),
        Route("/openai/responses", create_response, methods=["POST"]),
    ]

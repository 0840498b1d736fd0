"""Anthropic's Messages API inbound (`POST /v1/messages`, `/v1/messages/count_tokens`): a Messages
request becomes the gateway's internal chat-completions body, and a chat completion (or a stream
of chat.completion.chunk objects) becomes an Anthropic `message` (or Anthropic's stream events).
To an Anthropic deployment the client's body goes through unchanged; `native_usage` and
`NativeMeter` read the usage from what Anthropic answers.

Every field is checked the way Anthropic checks it, on every deployment: a malformed body, or a
top-level parameter that is not in the Messages API, is a 400 naming the field. Then, for a
deployment that is not Anthropic, each parameter is translated, or named in the list that
`to_chat` returns (the caller refuses those with a 400), or ignored where ignoring changes
nothing the client asked for:

| Messages API parameter | To a deployment that is not Anthropic |
| --- | --- |
| `model` | translated: routed by alias, like chat completions |
| `max_tokens` | `max_tokens` (1 to 1,000,000; 0, a cache pre-warm, is a 400) |
| `messages` | translated block by block (second table) |
| `system` (string or text blocks) | a system message; the blocks' texts joined by a blank line |
| `stop_sequences` | `stop` |
| `stream` | `stream`, with `stream_options.include_usage` (message_delta carries usage) |
| `temperature`, `top_p` | the same names (Anthropic's range, 0 to 1, is checked) |
| `metadata.user_id` | `user` |
| `tools`, custom | function tools: `input_schema` -> `parameters`; `description`, `strict` |
| `tools`, Anthropic's own types (1) | refused |
| `tools[].input_examples`, `defer_loading`, `allowed_callers` (2) | refused |
| `tools[].eager_input_streaming` | ignored (3) |
| `tool_choice` auto, any, tool, none | "auto", "required", that function, "none" |
| `tool_choice.disable_parallel_tool_use` | `parallel_tool_calls: false` |
| `output_config.format`, `output_format` | `response_format` json_schema, strict |
| `output_config.effort` | refused |
| `thinking` | `{"type": "disabled"}` asks for nothing; every other type is refused |
| `speed` | "standard" asks for nothing; "fast" is refused |
| `inference_geo` | refused: a data-residency promise only Anthropic can keep |
| `top_k`, `container`, `mcp_servers`, `context_management`, `compaction` | refused |
| `diagnostics`, `fallbacks`, `fallback_credit_token`, `billing_policy`, `thread` | refused |
| `cache_control` (top level, blocks, tools) | ignored (4) |
| `service_tier` | ignored (5) |
| any other top-level name | 400 unknown parameter, on every deployment |

| Content block | To a deployment that is not Anthropic |
| --- | --- |
| `text` | a text part (user) or the message's text (assistant); `citations` ignored (6) |
| `image`, base64 or url source | an `image_url` part: a `data:` URL, or the URL |
| `image` from the Files API, `image.transformations` | refused |
| `image` in an assistant message | refused |
| `tool_use` (assistant) | `tool_calls`, input as JSON text; a `caller` other than direct is refused |
| `tool_result` (user) | a `tool` message (7) |
| `thinking`, `redacted_thinking` (assistant) | ignored (8) |
| `document`, `search_result`, server-tool, MCP, `container_upload`, `compaction`, ... | refused |
| a final assistant message (prefill) | refused: other providers answer anew, they do not continue it |

(1) `web_search_*`, `web_fetch_*`, `bash_*`, `text_editor_*`, `computer_*`, `code_execution_*`,
`memory_*`, `tool_search_*`, `mcp_toolset`, ...: Anthropic runs them or knows their schema.
(2) `input_examples`: Anthropic shows them to the model in its own way; `defer_loading: true` and
`allowed_callers` other than `["direct"]` need Anthropic's tool search or code execution.
(3) It changes how a tool's input is cut into stream events, not the input.
(4) A prompt-caching hint: the answer is the same without it. No cache tokens are reported.
(5) It picks Anthropic's priority or standard capacity; the answer is the same.
(6) They point into an earlier answer's sources; the text itself is kept.
(7) String content, or its text blocks joined by a blank line; `is_error` makes the text start
"Error: "; its images go into a user message right after the turn's tool messages, each
result's images after a line naming its tool call.
(8) An earlier answer's reasoning; Anthropic's API also leaves it out of later turns' context.

`count_tokens_estimate` answers `/v1/messages/count_tokens` for deployments that are not
Anthropic: it is an estimate (about four characters a token), not a tokenizer's count.
"""

import math
import secrets
from typing import Any

import orjson

from .errors import GatewayError, invalid_request
from .providers import Usage, token_count
from .validation import MAX_MODEL_LENGTH, MAX_TOKENS_CEILING, storable_text

# Every top-level name of a Messages request, including the beta ones, so that a client's
# newer Anthropic feature reaches an Anthropic deployment instead of a gateway 400.
PARAMETERS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k",
        "metadata", "tools", "tool_choice", "thinking", "service_tier", "speed", "output_config", "output_format",
        "cache_control", "inference_geo", "container", "mcp_servers", "context_management", "compaction",
        "diagnostics", "fallbacks", "fallback_credit_token", "billing_policy", "thread",
    }
)  # fmt: skip
ANTHROPIC_ONLY_PARAMETERS = (
    "top_k", "inference_geo", "container", "mcp_servers", "context_management", "compaction", "diagnostics",
    "fallbacks", "fallback_credit_token", "billing_policy", "thread",
)  # fmt: skip
# Content blocks only Anthropic can take: documents, search results, server tools' calls and
# results, MCP, containers, compaction. Any other unknown type is a 400.
ANTHROPIC_ONLY_BLOCKS = frozenset(
    {
        "document", "search_result", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
        "code_execution_tool_result", "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
        "tool_search_tool_result", "advisor_tool_result", "mcp_tool_use", "mcp_tool_result", "mcp_tool_listing",
        "container_upload", "compaction", "tool_addition", "tool_removal", "fallback", "tool_reference",
        "browser_state",
    }
)  # fmt: skip
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
IMAGE_TOKEN_ESTIMATE = 1600  # Anthropic's cost of an image at its largest size (about 1.15 megapixels)


def _invalid(field: str, must: str) -> GatewayError:
    return invalid_request(f"'{field}' {must}.")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _object(value: object) -> dict[str, Any]:
    """A provider's object, or {} where it sent something else."""
    return value if isinstance(value, dict) else {}


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _given(value: object) -> bool:
    """Whether a parameter asks for something: not absent, null, or empty."""
    return value is not None and value != [] and value != {}


# Requests ------------------------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the chat-completions body, the names of what only an Anthropic deployment honours);
    GatewayError 400 naming the field for a body Anthropic would refuse."""
    unknown = sorted(set(body) - PARAMETERS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise invalid_request(f"Unknown parameter{'s' if len(unknown) > 1 else ''} {names}: not in the Messages API.")
    model = storable_text(body.get("model"), "model", MAX_MODEL_LENGTH)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_CEILING:
        raise _invalid("max_tokens", f"must be a whole number from 1 to {MAX_TOKENS_CEILING:,}")
    refused: list[str] = []
    chat: dict[str, Any] = {
        "model": model,
        "messages": _system(body.get("system")) + _messages(body.get("messages"), refused),
        "max_tokens": max_tokens,
    }
    _sampling(body, chat, refused)
    _tools(body, chat, refused)
    _output(body, chat, refused)
    _switches(body, refused)
    return chat, refused


def _system(value: object) -> list[dict[str, Any]]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [{"role": "system", "content": value}]
    if not isinstance(value, list):
        raise _invalid("system", "must be a string or a list of text blocks")
    texts = [_text(block, f"system.{index}") for index, block in enumerate(value)]
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _text(block: object, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise _invalid(where, "must be a text block")
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text", "must be a string")
    return text


def _messages(value: object, refused: list[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "must be a non-empty list")
    chat: list[dict[str, Any]] = []
    last = len(value) - 1
    for index, message in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _invalid(where, "must be an object with 'role' and 'content'")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise _invalid(f"{where}.{extra[0]}", "is not a message field (a message has 'role' and 'content')")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _invalid(f"{where}.role", "must be 'user' or 'assistant'")
        content = message.get("content")
        final_assistant = role == "assistant" and index == last
        if not isinstance(content, str | list):
            raise _invalid(f"{where}.content", "must be a string or a list of content blocks")
        if not content and not final_assistant:
            raise _invalid(f"{where}.content", "must not be empty (only a final assistant message may be)")
        if role == "user":
            chat.extend(_user_turn(content, where, refused))
        else:
            chat.append(_assistant_turn(content, where, refused))
        if final_assistant:
            refused.append(f"{where} (a final assistant message: prefill)")
    return chat


def _block_type(block: object, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(where, "must be a content block: an object with a 'type'")
    kind: str = block["type"]
    return kind


def _other_block(kind: str, where: str, refused: list[str]) -> None:
    """A block neither turn translates: Anthropic's own, or no block at all."""
    if kind not in ANTHROPIC_ONLY_BLOCKS:
        raise _invalid(f"{where}.type", f"is {kind!r}, which is not a Messages API content block")
    refused.append(f"{where} ({kind})")


def _user_turn(content: str | list[Any], where: str, refused: list[str]) -> list[dict[str, Any]]:
    """Tool messages for its tool results first (chat wants them right after the calls), then
    one user message with the rest, led by any images the tool results held."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content.{index}"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, at)})
        elif kind == "image":
            part = _image(block, at, refused)
            if part:
                parts.append(part)
        elif kind == "tool_result":
            tool_messages.append(_tool_result(block, at, refused, tool_images))
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise _invalid(f"{at}.type", f"is {kind!r}, which only an assistant message may hold")
        else:
            _other_block(kind, at, refused)
    parts = tool_images + parts
    return tool_messages + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_turn(content: str | list[Any], where: str, refused: list[str]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content.{index}"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at, refused))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # an earlier answer's reasoning: see the module docstring
        elif kind == "image":
            _image(block, at, refused)
            refused.append(f"{at} (an image in an assistant message)")
        elif kind == "tool_result":
            raise _invalid(f"{at}.type", "is 'tool_result', which only a user message may hold")
        else:
            _other_block(kind, at, refused)
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _image(block: dict[str, Any], where: str, refused: list[str]) -> dict[str, Any] | None:
    """The image_url part, or None when only Anthropic can take the image (named in `refused`)."""
    source = block.get("source")
    if block.get("transformations") is not None:
        refused.append(f"{where}.transformations")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media_type, data = source.get("media_type"), source.get("data")
        if media_type not in IMAGE_TYPES:
            raise _invalid(f"{where}.source.media_type", f"must be one of {', '.join(sorted(IMAGE_TYPES))}")
        if not isinstance(data, str) or not data:
            raise _invalid(f"{where}.source.data", "must be base64 text")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if kind == "url" and isinstance(source, dict):
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise _invalid(f"{where}.source.url", "must be a URL")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "file":
        refused.append(f"{where} (an image from the Files API)")
        return None
    raise _invalid(f"{where}.source", "must be an image source of type 'base64', 'url' or 'file'")


def _tool_call(block: dict[str, Any], where: str, refused: list[str]) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.id", "must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}.name", "must be a non-empty string")
    if not isinstance(arguments, dict):
        raise _invalid(f"{where}.input", "must be an object")
    caller = block.get("caller")
    if caller is not None and (not isinstance(caller, dict) or caller.get("type") != "direct"):
        refused.append(f"{where}.caller")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def _tool_result(block: dict[str, Any], where: str, refused: list[str], images: list[dict[str, Any]]) -> dict[str, Any]:
    """The tool message; the result's images are added to `images` for the user message after."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.tool_use_id", "must be a non-empty string")
    content = block.get("content")
    found: list[dict[str, Any]] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts: list[str] = []
        for index, item in enumerate(content):
            at = f"{where}.content.{index}"
            kind = _block_type(item, at)
            if kind == "text":
                texts.append(_text(item, at))
            elif kind == "image":
                part = _image(item, at, refused)
                if part:
                    found.append(part)
            elif kind in ANTHROPIC_ONLY_BLOCKS:
                refused.append(f"{at} ({kind})")
            else:
                raise _invalid(f"{at}.type", f"is {kind!r}, which a tool result cannot hold")
        text = "\n\n".join(texts)
    else:
        raise _invalid(f"{where}.content", "must be a string or a list of content blocks")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _invalid(f"{where}.is_error", "must be true or false")
    if is_error:
        text = f"Error: {text}" if text else "Error"
    if found:
        images.append({"type": "text", "text": f"Images from the result of tool call {call_id}:"})
        images.extend(found)
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _sampling(body: dict[str, Any], chat: dict[str, Any], refused: list[str]) -> None:
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise _invalid("stop_sequences", "must be a list of strings")
        if stop:
            chat["stop"] = stop
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not _number(value) or not 0 <= value <= 1:
                raise _invalid(name, "must be a number from 0 to 1")
            chat[name] = value
    top_k = body.get("top_k")
    if top_k is not None and (not _whole(top_k) or top_k < 0):
        raise _invalid("top_k", "must be a whole number, 0 or more")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "must be true or false")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid("metadata", "must be an object")
        extra = sorted(set(metadata) - {"user_id"})
        if extra:
            raise _invalid(f"metadata.{extra[0]}", "is not a metadata field (only 'user_id' is)")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise _invalid("metadata.user_id", "must be a string")
        if user:
            chat["user"] = user


def _tools(body: dict[str, Any], chat: dict[str, Any], refused: list[str]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _invalid("tools", "must be a list")
    functions = [function for index, tool in enumerate(tools or []) if (function := _tool(tool, index, refused))]
    choice = body.get("tool_choice")
    if choice is None:
        pass
    elif not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    else:
        name = choice.get("name")
        if choice["type"] == "tool" and (not isinstance(name, str) or not name):
            raise _invalid("tool_choice.name", "must name a tool")
        single = choice.get("disable_parallel_tool_use")
        if single is not None and not isinstance(single, bool):
            raise _invalid("tool_choice.disable_parallel_tool_use", "must be true or false")
        if functions:  # chat refuses tool_choice without tools; without tools it means nothing
            chat["tool_choice"] = (
                {"type": "function", "function": {"name": name}}
                if choice["type"] == "tool"
                else TOOL_CHOICES[choice["type"]]
            )
            if single and choice["type"] != "none":
                chat["parallel_tool_calls"] = False
    if functions:
        chat["tools"] = functions


def _tool(tool: object, index: int, refused: list[str]) -> dict[str, Any] | None:
    where = f"tools.{index}"
    if not isinstance(tool, dict):
        raise _invalid(where, "must be a tool definition (an object)")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        if not isinstance(kind, str):
            raise _invalid(f"{where}.type", "must be a string")
        refused.append(f"{where} ({kind})")
        return None
    name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}.name", "must be a non-empty string")
    if not isinstance(schema, dict):
        raise _invalid(f"{where}.input_schema", "must be a JSON schema object")
    if description is not None and not isinstance(description, str):
        raise _invalid(f"{where}.description", "must be a string")
    if _given(tool.get("input_examples")):
        refused.append(f"{where}.input_examples")
    if tool.get("defer_loading"):
        refused.append(f"{where}.defer_loading")
    if tool.get("allowed_callers") not in (None, ["direct"]):
        refused.append(f"{where}.allowed_callers")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if description:
        function["description"] = description
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise _invalid(f"{where}.strict", "must be true or false")
        function["strict"] = strict
    return {"type": "function", "function": function}


def _output(body: dict[str, Any], chat: dict[str, Any], refused: list[str]) -> None:
    config = body.get("output_config")
    formats: list[tuple[str, object]] = []
    if config is not None:
        if not isinstance(config, dict):
            raise _invalid("output_config", "must be an object")
        for key, value in config.items():
            if key == "format":
                formats.append(("output_config.format", value))
            elif _given(value):
                refused.append(f"output_config.{key}")
    if body.get("output_format") is not None:
        formats.append(("output_format", body["output_format"]))
    formats = [(field, value) for field, value in formats if value is not None]
    if len(formats) > 1:
        raise invalid_request("Give 'output_config.format' or 'output_format', not both.")
    for field, value in formats:
        if not isinstance(value, dict) or value.get("type") != "json_schema":
            raise _invalid(f"{field}.type", "must be 'json_schema'")
        schema = value.get("schema")
        if not isinstance(schema, dict):
            raise _invalid(f"{field}.schema", "must be a JSON schema object")
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }


def _switches(body: dict[str, Any], refused: list[str]) -> None:
    """The top-level parameters that either ask for nothing or only Anthropic can honour."""
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or not isinstance(thinking.get("type"), str):
            raise _invalid("thinking.type", "must be a string such as 'enabled', 'adaptive' or 'disabled'")
        if thinking["type"] != "disabled":
            refused.append("thinking")
    speed = body.get("speed")
    if speed not in (None, "standard", "fast"):
        raise _invalid("speed", "must be 'standard' or 'fast'")
    if speed == "fast":
        refused.append("speed")
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise _invalid("service_tier", "must be 'auto' or 'standard_only'")
    cache_control = body.get("cache_control")
    if cache_control is not None and not isinstance(cache_control, dict):
        raise _invalid("cache_control", "must be an object")
    refused.extend(name for name in ANTHROPIC_ONLY_PARAMETERS if _given(body.get(name)))


# Answers -------------------------------------------------------------------------------------


def _message_id(upstream_id: object) -> str:
    """msg_ and the provider's id where it has one, so logs on both sides line up."""
    if isinstance(upstream_id, str) and upstream_id:
        return "msg_" + upstream_id.removeprefix("chatcmpl-").removeprefix("msg_")
    return "msg_" + secrets.token_hex(12)


def _tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's input object. Arguments that are not a JSON object are kept, as text, under
    "arguments", rather than lost."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def _stop(choice: dict[str, Any], has_tool_use: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). Which stop sequence matched is known only where the provider
    says it (vLLM's `stop_reason`, SGLang's `matched_stop`); else a stop is end_turn."""
    finish = choice.get("finish_reason")
    if finish == "stop":
        for name in ("stop_reason", "matched_stop"):
            matched = choice.get(name)
            if isinstance(matched, str) and matched:
                return "stop_sequence", matched
    reason = STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    if has_tool_use and reason == "end_turn":
        reason = "tool_use"  # some providers finish "stop" after a call; clients loop on tool_use
    return reason, None


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def from_chat(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic `message` from a chat completion's first choice."""
    choices = completion.get("choices")
    choice = _object(choices[0]) if isinstance(choices, list) and choices else {}
    reply = _object(choice.get("message"))
    content: list[dict[str, Any]] = []
    text = _text_of(reply.get("content")) or _string(reply.get("refusal"))
    if text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = _object(call.get("function"))
        content.append(
            {
                "type": "tool_use",
                "id": _string(call.get("id")) or "toolu_" + secrets.token_hex(12),
                "name": _string(function.get("name")),
                "input": _tool_input(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = _stop(choice, any(block["type"] == "tool_use" for block in content))
    usage = _object(completion.get("usage"))
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": token_count(usage.get("prompt_tokens")),
            "output_tokens": token_count(usage.get("completion_tokens")),
        },
    }


def _event(kind: str, event: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **event}) + b"\n\n"


class MessagesStream:
    """chat.completion.chunk objects in, Anthropic's server-sent events out: message_start,
    content_block_start/delta/stop for each text run and each tool call, message_delta with the
    stop reason and usage, message_stop.

    The stream ends when the finish has come and a usage report after it (the usage chunk, or
    usage on the finishing chunk itself); `close()` ends it for a provider stream that stopped
    short of that. Without a usage report, output tokens are estimated from the text sent."""

    def __init__(self, model: str, input_estimate: int):
        self.model = model
        self.input_tokens = input_estimate
        self.output_tokens = 0
        self.reported = False  # the provider reported usage
        self.started = self.ended = False
        self.blocks = 0  # content blocks started so far
        self.open: str | None = None  # "text" or "tool" while a block is open
        self.tools: dict[int, int] = {}  # chat tool-call index -> content block index
        self.pending: dict[int, dict[str, str]] = {}  # calls whose name has not come yet
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.sent_chars = 0

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if self.ended:
            return b""
        out: list[bytes] = []
        if not self.started:
            out.append(self._start(chunk.get("id")))
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice, out)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        # Usage is final only once it comes with or after the finish (some providers count
        # as they go); then the stream can end.
        if self.stop_reason is not None and isinstance(usage, dict):
            out.append(self._end())
        return b"".join(out)

    def close(self) -> bytes:
        if self.ended:
            return b""
        out: list[bytes] = []
        if not self.started:
            out.append(self._start(None))
        self._flush_pending(out)
        self._close_block(out)
        if self.stop_reason is None:
            self.stop_reason = "tool_use" if self.tools else "end_turn"
        out.append(self._end())
        return b"".join(out)

    def _start(self, upstream_id: object) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": _message_id(upstream_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = _object(choice.get("delta"))
        for name in ("content", "refusal"):
            text = delta.get(name)
            if isinstance(text, str) and text:
                self._text(text, out)
        for position, call in enumerate(delta.get("tool_calls") or []):
            if isinstance(call, dict):
                self._tool_delta(call, position, out)
        finish = choice.get("finish_reason")
        if finish is not None and self.stop_reason is None:
            self._flush_pending(out)
            self._close_block(out)
            self.stop_reason, self.stop_sequence = _stop(choice, bool(self.tools))

    def _text(self, text: str, out: list[bytes]) -> None:
        if self.open != "text":
            self._close_block(out)
            out.append(
                _event("content_block_start", {"index": self.blocks, "content_block": {"type": "text", "text": ""}})
            )
            self.blocks += 1
            self.open = "text"
        self.sent_chars += len(text)
        out.append(
            _event("content_block_delta", {"index": self.blocks - 1, "delta": {"type": "text_delta", "text": text}})
        )

    def _tool_delta(self, call: dict[str, Any], position: int, out: list[bytes]) -> None:
        index = call["index"] if _whole(call.get("index")) else position
        function = _object(call.get("function"))
        arguments = _string(function.get("arguments"))
        if index not in self.tools:
            pending = self.pending.setdefault(index, {"id": "", "name": "", "arguments": ""})
            pending["id"] = pending["id"] or _string(call.get("id"))
            pending["name"] = pending["name"] or _string(function.get("name"))
            pending["arguments"] += arguments
            if pending["name"]:  # a tool_use block opens with its name: wait for it
                self._open_tool(index, out)
            return
        self._arguments(index, arguments, out)

    def _open_tool(self, index: int, out: list[bytes]) -> None:
        pending = self.pending.pop(index)
        self._close_block(out)
        block = {"type": "tool_use", "id": pending["id"] or "toolu_" + secrets.token_hex(12), "name": pending["name"]}
        out.append(_event("content_block_start", {"index": self.blocks, "content_block": {**block, "input": {}}}))
        self.tools[index] = self.blocks
        self.blocks += 1
        self.open = "tool"
        self._arguments(index, pending["arguments"], out)

    def _arguments(self, index: int, arguments: str, out: list[bytes]) -> None:
        if arguments:
            # Providers send one call's arguments before the next call starts; were one to go
            # back to an earlier call, its delta still names that call's block.
            self.sent_chars += len(arguments)
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(_event("content_block_delta", {"index": self.tools[index], "delta": delta}))

    def _flush_pending(self, out: list[bytes]) -> None:
        for index in sorted(self.pending):
            self._open_tool(index, out)

    def _close_block(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(_event("content_block_stop", {"index": self.blocks - 1}))
            self.open = None

    def _usage(self, usage: dict[str, Any]) -> None:
        if "prompt_tokens" in usage:
            self.input_tokens = token_count(usage["prompt_tokens"])
        if "completion_tokens" in usage:
            self.output_tokens = token_count(usage["completion_tokens"])
        self.reported = True

    def _end(self) -> bytes:
        self.ended = True
        if not self.reported:
            self.output_tokens = math.ceil(self.sent_chars / 4)
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        return _event("message_delta", {"delta": delta, "usage": usage}) + _event("message_stop", {})


# Errors ----------------------------------------------------------------------------------------


def error_document(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape, its type chosen by the status as Anthropic chooses it."""
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_event(status: int, message: str) -> bytes:
    """The `error` event for a stream that fails after it has begun (the SDK raises on it)."""
    return b"event: error\ndata: " + orjson.dumps(error_document(status, message)) + b"\n\n"


# Usage of native Anthropic answers -------------------------------------------------------------


def _input_total(usage: dict[str, Any]) -> int:
    """Input tokens including the prompt cache's reads and writes: each is input Anthropic
    processed and bills, at its own rate; Usage has one input count, so they count as input."""
    return sum(
        token_count(usage.get(name))
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def native_usage(message: dict[str, Any]) -> Usage:
    """The usage an Anthropic `message` reports."""
    usage = message.get("usage")
    if not isinstance(usage, dict) or not ("input_tokens" in usage or "output_tokens" in usage):
        return Usage()
    return Usage(_input_total(usage), token_count(usage.get("output_tokens")), reported=True)


class NativeMeter:
    """Reads usage from Anthropic's own stream events as they pass: input tokens from
    message_start, output tokens (and final input counts, where sent) from message_delta. The
    counts in message_delta are running totals, so they replace, never add."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.counts: dict[str, int] = {}

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
        elif kind == "message_delta":
            usage = event.get("usage")
        else:
            return
        if not isinstance(usage, dict):
            return
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"):
            if usage.get(name) is not None:
                self.counts[name] = token_count(usage[name])
        self.usage.input_tokens = _input_total(self.counts)
        self.usage.output_tokens = self.counts.get("output_tokens", 0)
        self.usage.reported = True


# count_tokens ------------------------------------------------------------------------------------


def _without_image_data(value: Any) -> tuple[Any, int]:
    """(the value with base64 image data taken out, the number of images taken out)."""
    if isinstance(value, list):
        items = [_without_image_data(item) for item in value]
        return [item for item, _ in items], sum(count for _, count in items)
    if isinstance(value, dict):
        source = value.get("source")
        if value.get("type") == "image" and isinstance(source, dict):
            return {**value, "source": {**source, "data": ""}}, 1
        pairs = {key: _without_image_data(item) for key, item in value.items()}
        return {key: item for key, (item, _) in pairs.items()}, sum(count for _, count in pairs.values())
    return value, 0


def count_tokens_estimate(body: dict[str, Any]) -> int:
    """An estimate of a request's input tokens, for deployments that are not Anthropic: about
    four characters a token over the JSON of `system`, `messages` and `tools`, plus a flat
    IMAGE_TOKEN_ESTIMATE per image (its base64 text says nothing of its tokens). At least 1."""
    counted, images = _without_image_data([body.get("system"), body.get("messages"), body.get("tools")])
    return max(1, math.ceil(len(orjson.dumps(counted)) / 4) + images * IMAGE_TOKEN_ESTIMATE)

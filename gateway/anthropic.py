"""The Anthropic Messages upstream: an OpenAI chat-completions body becomes a Messages request,
and a Messages answer or event stream becomes a chat completion or chat.completion.chunk objects.

Nothing is dropped without a word. Each parameter of the OpenAI body is translated, accepted
because it cannot change the answer, or refused with a 400 naming it:

parameter                     on an Anthropic deployment
----------------------------  -------------------------------------------------------------------
model                         the deployment's upstream model
messages: system, developer   `system`: their texts in order, joined by blank lines, wherever
                              they stood in the conversation
messages: user text           text blocks
messages: user image_url      image blocks: a base64 data URL of image/jpeg, png, gif or webp
                              -> a base64 source; an http(s) URL -> a url source; any other
                              media type or scheme: 400. `detail` has no Anthropic counterpart
                              and is not sent
messages: user file           file_data, a PDF data URL -> a document block; file_id or another
                              media type: 400
messages: user input_audio    400
messages: assistant           text and refusal -> text blocks; tool_calls -> tool_use blocks
                              (arguments must be a JSON object); annotations, the citations
                              of an answer echoed back, are not sent
messages: tool                tool_result blocks (string or text parts) in the next user turn
messages: name, audio,        400
  function_call
max_tokens,                   `max_tokens`: the smaller of the two, capped at the deployment's
  max_completion_tokens       max_output_tokens (the cap the budget reserves for); the cap when
                              neither is sent
temperature                   `temperature`, 0 to 1; above 1: 400 (Anthropic's range ends at 1;
                              the gateway neither clamps nor rescales)
top_p                         `top_p`
top_k (Anthropic's own)       `top_k`
stop                          `stop_sequences`
stream                        `stream`
stream_options                include_usage: the last chunk carries usage (Anthropic always
                              reports it)
tools                         function tools -> `tools` with `input_schema`; `strict` is taken
                              but Anthropic does not enforce it; other tool types: 400
tool_choice                   auto, none, required, a function -> auto, none, any, tool;
                              allowed_tools and custom: 400
parallel_tool_calls: false    `tool_choice.disable_parallel_tool_use`
response_format               json_object, json_schema -> a forced tool (below); text: nothing
user, safety_identifier       `metadata.user_id` (safety_identifier wins when both are sent)
n                             1 only: the gateway fans out n > 1 before an adapter sees it, so
                              n > 1 here is a 400
service_tier                  auto: nothing sent; default -> standard_only; flex, scale,
                              priority: 400
store                         false only; true asks for a stored completion: 400
metadata, prompt_cache_key,   accepted, not sent: they label or cache the request and cannot
  prompt_cache_retention      change the answer
logprobs, top_logprobs        400 unless false, 0 (sent switched off)
logit_bias                    400 unless {}
presence_penalty,             400 unless 0
  frequency_penalty
reasoning_effort              400 unless "none" (Claude does not think unless asked to)
verbosity                     400 unless "medium" (OpenAI's default)
modalities                    400 unless ["text"]
seed, audio, prediction,      400
  web_search_options,
  functions, function_call
anything else                 400, as OpenAI answers an argument it does not know

A parameter sent as null counts as not sent.

JSON mode. `response_format` becomes a tool named JSON_TOOL whose input_schema is the caller's
schema ({"type": "object"} for json_object; Anthropic wants an object at the root of a tool's
input, so a schema of any other root type is a 400). Without tools of the caller's own, or with
tool_choice "none", the JSON tool is forced (tool_choice {type: tool}, one call; the caller's
tools stay defined, as Anthropic wants when the conversation holds tool_use blocks). With the
caller's tools and tool_choice auto (or none sent), both are offered under tool_choice
{type: any}: the model either calls the caller's tools, answered as tool_calls, or gives its
answer through the JSON tool, as OpenAI would answer in JSON once it needs no more tools. With
tool_choice "required" or a named function, the answer is a tool call anyway and no JSON tool is
added. The JSON tool's input comes back as the assistant's content, JSON text, with
finish_reason "stop" (or "tool_calls" when caller tools were called beside it); in streams its
input_json_delta pieces become content deltas. The answer alone cannot tell which tools were
offered, so JSON_TOOL is a reserved name: a caller tool of that name is a 400. A json_schema's
`strict` is taken, but the schema is then Anthropic's guidance, not a guarantee.

Stop reasons: end_turn, stop_sequence and pause_turn -> stop; max_tokens and
model_context_window_exceeded -> length; tool_use -> tool_calls (stop when only the JSON tool was
called); refusal -> content_filter. Usage: prompt tokens are Anthropic's input tokens plus the
cache creation and cache read tokens, as OpenAI's prompt_tokens include cached ones.
"""

import time
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import GatewayError, invalid_request
from .providers import (
    Fetcher,
    Outbound,
    Target,
    Usage,
    chat_chunk,
    split_data_url,
    token_count,
    tool_input,
    unsupported,
    usage_chunk,
)

ANTHROPIC_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
PROVIDER = "Anthropic"
LEGACY_MAX_TOKENS = 4096  # for request_to_anthropic, which knows no deployment cap
JSON_TOOL = "json_answer"  # the name gateway/bedrock.py reserves too
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Top-level parameters translated by messages_request, and those accepted without being sent.
TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
        "safety_identifier",
        "n",
        "service_tier",
    }
)
WITHOUT_EFFECT = frozenset({"metadata", "prompt_cache_key", "prompt_cache_retention"})
# Refused parameters that may still be sent switched off.
OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "modalities": (["text"],),
    "reasoning_effort": ("none",),
    "verbosity": ("medium",),
    "store": (False,),
}
REFUSAL_HINTS = {
    "logprobs": "Anthropic does not return token log probabilities.",
    "top_logprobs": "Anthropic does not return token log probabilities.",
    "logit_bias": "Anthropic has no token biases.",
    "presence_penalty": "Anthropic has no repetition penalties.",
    "frequency_penalty": "Anthropic has no repetition penalties.",
    "seed": "Anthropic offers no seeded sampling.",
    "audio": "Anthropic answers in text only.",
    "modalities": "Anthropic answers in text only.",
    "prediction": "Anthropic has no predicted outputs.",
    "reasoning_effort": "For extended thinking, call POST /v1/messages with `thinking`.",
    "verbosity": "Anthropic has no verbosity setting.",
    "web_search_options": "Anthropic's web search is a server tool the gateway does not translate.",
    "functions": "Send `tools` instead.",
    "function_call": "Send `tool_choice` instead.",
    "store": "Anthropic keeps no stored completions.",
}
# Message fields translated; any other field is refused unless it is empty (null, "", [], {}).
MESSAGE_FIELDS = {
    "system": frozenset({"role", "content"}),
    "developer": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
MESSAGE_FIELD_HINTS = {
    "name": "Anthropic has no participant names.",
    "audio": "Anthropic cannot replay audio answers.",
    "function_call": "Send `tool_calls` instead.",
}
ANNOTATIONS = "annotations"  # citations on an echoed assistant answer: output only, never input


# Requests ----------------------------------------------------------------------------------


def messages_request(
    body: dict[str, Any], upstream_model: str, *, stream: bool, output_cap: int | None
) -> dict[str, Any]:
    """An OpenAI chat body as an Anthropic Messages body; a 400 for anything that cannot be."""
    _refuse_untranslatable(body)
    system, turns = _conversation(body.get("messages"))
    request: dict[str, Any] = {
        "model": upstream_model,
        "messages": turns,
        "max_tokens": _max_tokens(body, output_cap),
    }
    if system:
        request["system"] = system
    request.update(_sampling(body))
    tools, tool_choice = _tools(body)
    if tools:
        request["tools"] = tools
    if tool_choice is not None:
        request["tool_choice"] = tool_choice
    user_id = _user_id(body)
    if user_id:
        request["metadata"] = {"user_id": user_id}
    tier = _service_tier(body.get("service_tier"))
    if tier:
        request["service_tier"] = tier
    if stream:
        request["stream"] = True
    return request


def _refuse_untranslatable(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if value is None or name in WITHOUT_EFFECT:
            continue
        if name in OFF_VALUES and value in OFF_VALUES[name]:
            continue
        if name in TRANSLATED:
            continue
        raise unsupported(name[:64], PROVIDER, REFUSAL_HINTS.get(name, ""))
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", PROVIDER, "Anthropic answers with one choice per call.")


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _max_tokens(body: dict[str, Any], output_cap: int | None) -> int:
    asked = []
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _whole_number(value) or value < 1:
            raise invalid_request(f"'{name}' must be a whole number of at least 1.")
        asked.append(value)
    wanted = min(asked) if asked else (output_cap or LEGACY_MAX_TOKENS)
    return min(wanted, output_cap) if output_cap else wanted


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    temperature = body.get("temperature")
    if temperature is not None:
        if not _number(temperature) or temperature < 0:
            raise invalid_request("'temperature' must be a number from 0 to 1.")
        if temperature > 1:
            raise unsupported(
                "temperature",
                PROVIDER,
                f"Anthropic's range is 0 to 1, and {temperature:g} is neither clamped nor rescaled.",
            )
        sampling["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        if not _number(top_p) or not 0 <= top_p <= 1:
            raise invalid_request("'top_p' must be a number from 0 to 1.")
        sampling["top_p"] = top_p
    top_k = body.get("top_k")
    if top_k is not None:
        if not _whole_number(top_k) or top_k < 1:
            raise invalid_request("'top_k' must be a whole number of at least 1.")
        sampling["top_k"] = top_k
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) and item for item in stop):
            raise invalid_request("'stop' must be a string or a list of non-empty strings.")
        if stop:
            sampling["stop_sequences"] = stop
    return sampling


def _user_id(body: dict[str, Any]) -> str:
    for name in ("safety_identifier", "user"):
        value = body.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise invalid_request(f"'{name}' must be a string.")
        return value
    return ""


def _service_tier(tier: Any) -> str:
    if tier is None or tier == "auto":
        return ""  # Anthropic's default is auto too
    if tier == "default":
        return "standard_only"
    raise unsupported("service_tier", PROVIDER, "Anthropic offers auto and default (its standard_only) only.")


# Messages ----------------------------------------------------------------------------------


def _conversation(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Anthropic turns): same-role neighbours share one turn, so tool results
    and the user's words after them reach Anthropic as the one user turn it expects."""
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty list.")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_FIELDS:
            raise invalid_request(f"{where} needs a 'role' of {', '.join(sorted(MESSAGE_FIELDS))}.")
        role = message["role"]
        _refuse_message_fields(message, role, where)
        if role in {"system", "developer"}:
            system.extend(block["text"] for block in _text_blocks(message.get("content"), f"{where}.content"))
            continue
        if role == "tool":
            turn_role, blocks = "user", [_tool_result(message, where)]
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message, where)
        else:
            turn_role, blocks = "user", _user_blocks(message.get("content"), f"{where}.content")
        if not blocks:
            raise invalid_request(f"{where} has no content, and Anthropic refuses empty messages.")
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return "\n\n".join(text for text in system if text), turns


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _refuse_message_fields(message: dict[str, Any], role: str, where: str) -> None:
    for name, value in message.items():
        if name in MESSAGE_FIELDS[role] or _empty(value) or (role == "assistant" and name == ANNOTATIONS):
            continue
        raise unsupported(f"{where}.{name[:64]}", PROVIDER, MESSAGE_FIELD_HINTS.get(name, ""))


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Content as a list of parts: a string is one text part, null none."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return content
    raise invalid_request(f"'{where}' must be a string or a list of content parts.")


def _text_of(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise invalid_request(f"'{where}.text' must be a string.")
    return text


def _text_blocks(content: Any, where: str, kinds: tuple[str, ...] = ("text",)) -> list[dict[str, Any]]:
    """Text blocks of content that may hold only text parts (empty texts left out)."""
    blocks = []
    for number, part in enumerate(_parts(content, where)):
        kind = part.get("type")
        if kind not in kinds:
            raise unsupported(f"{where}[{number}].type", PROVIDER, f"Only {' and '.join(kinds)} parts are taken here.")
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise invalid_request(f"'{where}[{number}].{kind}' must be a string.")
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    blocks = []
    for number, part in enumerate(_parts(content, where)):
        at = f"{where}[{number}]"
        kind = part.get("type")
        if kind == "text":
            text = _text_of(part, at)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), f"{at}.image_url"))
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), f"{at}.file"))
        elif kind == "input_audio":
            raise unsupported(f"{at}.input_audio", PROVIDER, "Anthropic does not listen to audio.")
        else:
            raise unsupported(f"{at}.type", PROVIDER, "Text, image_url and file parts are translated.")
    return blocks


def _data_url(url: str, where: str) -> tuple[str, str]:
    """(media type, base64 data) of a data URL."""
    parts = split_data_url(url)
    if parts is None or not parts[2]:
        raise invalid_request(f"'{where}' must be a base64 data URL.")
    media_type, data, _ = parts
    return ("image/jpeg" if media_type == "image/jpg" else media_type), data


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid_request(f"'{where}.url' must be a data URL or an http(s) URL.")
    if url[:5].lower() == "data:":
        media_type, data = _data_url(url, f"{where}.url")
        if media_type not in IMAGE_TYPES:
            raise unsupported(
                where,
                PROVIDER,
                f"Anthropic reads image/jpeg, image/png, image/gif and image/webp images, not {media_type[:40]!r}.",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.split(":", 1)[0].lower() in {"http", "https"}:
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid_request(f"'{where}.url' must be a data URL or an http(s) URL.")


def _document_block(file: Any, where: str) -> dict[str, Any]:
    if not isinstance(file, dict):
        raise invalid_request(f"'{where}' must be an object.")
    if file.get("file_id"):
        raise unsupported(f"{where}.file_id", PROVIDER, "Send the file as file_data, a base64 data URL.")
    data_url = file.get("file_data")
    if not isinstance(data_url, str) or data_url[:5].lower() != "data:":
        raise invalid_request(f"'{where}.file_data' must be a base64 data URL.")
    media_type, data = _data_url(data_url, f"{where}.file_data")
    if media_type != "application/pdf":
        raise unsupported(where, PROVIDER, f"Anthropic reads application/pdf files, not {media_type[:40]!r}.")
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), f"{where}.content", ("text", "refusal"))
    refusal = message.get("refusal")
    if refusal is not None:
        if not isinstance(refusal, str):
            raise invalid_request(f"'{where}.refusal' must be a string.")
        if refusal:
            blocks.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise invalid_request(f"'{where}.tool_calls' must be a list.")
    for number, call in enumerate(calls):
        at = f"{where}.tool_calls[{number}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise unsupported(f"{at}.type", PROVIDER, "Only function calls are translated.")
        function = call.get("function")
        call_id = call.get("id")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise invalid_request(f"'{at}.function.name' must be a non-empty string.")
        if not isinstance(call_id, str) or not call_id:
            raise invalid_request(f"'{at}.id' must be a non-empty string.")
        arguments = function.get("arguments")
        if not isinstance(arguments, str | None):
            arguments = 0  # not JSON text: refused below
        parsed = tool_input(arguments, f"{at}.function.arguments", ", as Anthropic takes tool input")
        blocks.append({"type": "tool_use", "id": call_id, "name": function["name"], "input": parsed})
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid_request(f"'{where}.tool_call_id' must be a non-empty string.")
    content = message.get("content")
    result: Any = content if isinstance(content, str) else _text_blocks(content, f"{where}.content")
    return {"type": "tool_result", "tool_use_id": call_id, "content": result}


# Tools and JSON mode ----------------------------------------------------------------------


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(Anthropic tools, Anthropic tool_choice): the caller's tools, and the JSON tool when the
    answer must be JSON (see the module docstring for how the two combine)."""
    tools = _tool_definitions(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"))
    json_tool = _json_tool(body.get("response_format"))
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid_request("'parallel_tool_calls' must be true or false.")
    if not tools and choice not in {None, "auto", "none"}:
        raise invalid_request("'tool_choice' asks for a tool call, but 'tools' offers none.")
    anthropic_choice: dict[str, Any] | None = None
    if json_tool is not None and choice in {None, "auto", "none"}:
        if not tools or choice == "none":
            return [*tools, json_tool], {"type": "tool", "name": JSON_TOOL, "disable_parallel_tool_use": True}
        tools, anthropic_choice = [*tools, json_tool], {"type": "any"}
    elif not tools:
        return [], None
    elif choice in {"auto", "none"}:
        anthropic_choice = {"type": choice}
    elif choice == "required":
        anthropic_choice = {"type": "any"}
    elif choice is not None:
        anthropic_choice = {"type": "tool", "name": choice.removeprefix("function:")}
    if parallel is False:
        anthropic_choice = anthropic_choice or {"type": "auto"}
        if anthropic_choice["type"] != "none":
            anthropic_choice["disable_parallel_tool_use"] = True
    return tools, anthropic_choice


def _tool_definitions(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid_request("'tools' must be a list.")
    definitions = []
    for number, tool in enumerate(tools):
        at = f"tools[{number}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise unsupported(f"{at}.type", PROVIDER, "Only function tools are translated.")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise invalid_request(f"'{at}.function.name' must be a non-empty string.")
        if function["name"] == JSON_TOOL:
            raise invalid_request(f"The tool name {JSON_TOOL!r} is reserved by the gateway for JSON answers.")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid_request(f"'{at}.function.parameters' must be a JSON schema object.")
        definition: dict[str, Any] = {
            "name": function["name"],
            "input_schema": parameters or {"type": "object", "properties": {}},
        }
        description = function.get("description")
        if isinstance(description, str) and description:
            definition["description"] = description
        definitions.append(definition)
    return definitions


def _tool_choice(choice: Any) -> str | None:
    """auto, none, required, "function:<name>" or None."""
    if choice is None:
        return None
    if isinstance(choice, str) and choice in {"auto", "none", "required"}:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise invalid_request("'tool_choice.function.name' must be a non-empty string.")
        if name == JSON_TOOL:
            raise invalid_request(f"The tool name {JSON_TOOL!r} is reserved by the gateway for JSON answers.")
        return "function:" + name
    raise unsupported("tool_choice", PROVIDER, "auto, none, required and a named function are translated.")


def _json_tool(response_format: Any) -> dict[str, Any] | None:
    """The tool through which a JSON answer is asked for, or None for a text answer."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise invalid_request("'response_format' must be an object.")
    kind = response_format.get("type")
    if kind == "text":
        return None
    description = "Give your whole answer by calling this tool: its input is the answer, as JSON."
    if kind == "json_object":
        return {"name": JSON_TOOL, "description": description, "input_schema": {"type": "object"}}
    if kind != "json_schema":
        raise unsupported("response_format", PROVIDER, "Types text, json_object and json_schema are translated.")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid_request("'response_format.json_schema' must be an object.")
    schema = spec.get("schema")
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict) or not (
        schema.get("type") == "object" or ("type" not in schema and "properties" in schema)
    ):
        raise unsupported(
            "response_format.json_schema.schema",
            PROVIDER,
            "The answer travels as a tool's input, which Anthropic takes only as an object: give the schema "
            "type 'object' at its root.",
        )
    name = spec.get("name")
    if isinstance(name, str) and name:
        description += f" The answer is a {name}."
    about = spec.get("description")
    if isinstance(about, str) and about:
        description += " " + about
    return {"name": JSON_TOOL, "description": description, "input_schema": schema}


# Answers -----------------------------------------------------------------------------------


def _not_a_message() -> GatewayError:
    return GatewayError(502, "upstream_error", "The provider's answer was not an Anthropic message.")


def _finish_reason(stop_reason: Any, called_tools: bool) -> str:
    if stop_reason == "tool_use" and not called_tools:
        return "stop"  # only the JSON tool was called: the JSON is the answer
    return STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _input_tokens(usage: dict[str, Any]) -> int:
    return (
        token_count(usage.get("input_tokens"))
        + token_count(usage.get("cache_creation_input_tokens"))
        + token_count(usage.get("cache_read_input_tokens"))
    )


def _completion_id(message_id: Any) -> str:
    return "chatcmpl-" + (message_id.removeprefix("msg_") if isinstance(message_id, str) else "")


def completion_from_message(message: Any, alias: str) -> tuple[dict[str, Any], Usage]:
    """(chat completion, usage as reported) from an Anthropic message."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise _not_a_message()
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if block.get("name") == JSON_TOOL:
                text.append(arguments)
                continue
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": arguments},
                }
            )
        # thinking, redacted_thinking and server tool blocks are never asked for
    reported = message.get("usage")
    usage = (
        Usage(_input_tokens(reported), token_count(reported.get("output_tokens")), True)
        if isinstance(reported, dict) and reported
        else Usage()
    )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    completion = {
        "id": _completion_id(message.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [
            {"index": 0, "message": reply, "finish_reason": _finish_reason(message.get("stop_reason"), bool(calls))}
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }
    return completion, usage


# Streams -----------------------------------------------------------------------------------


@dataclass
class _Block:
    """What one Anthropic content block becomes in the chunks."""

    kind: str  # "text", "json" (the JSON tool: content deltas), "call" (a caller's tool) or "other"
    call_index: int = 0  # the OpenAI tool call index of a "call"
    streamed: bool = False  # some input JSON was sent


class MessagesStreamTranslator:
    """Anthropic stream events in, chat.completion.chunk objects out; `usage` fills as it goes
    (input from message_start, output from message_delta, reported once message_delta came).
    An error event raises the GatewayError of stream_failure."""

    def __init__(self, alias: str, include_usage: bool):
        self.alias, self.include_usage = alias, include_usage
        self.usage = Usage()
        self.chunk_id = "chatcmpl-stream"
        self.created = int(time.time())
        self.blocks: dict[Any, _Block] = {}
        self.calls = 0  # tool calls of the caller's tools so far

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chat_chunk(self.chunk_id, self.created, self.alias, delta, finish)

    def _arguments(self, block: _Block, text: str) -> dict[str, Any]:
        block.streamed = True
        if block.kind == "json":
            return self._chunk({"content": text})
        return self._chunk({"tool_calls": [{"index": block.call_index, "function": {"arguments": text}}]})

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            message = message if isinstance(message, dict) else {}
            self.chunk_id = _completion_id(message.get("id"))
            usage = message.get("usage")
            if isinstance(usage, dict):
                self.usage.input_tokens = _input_tokens(usage)
                self.usage.output_tokens = token_count(usage.get("output_tokens"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block"))
        if kind == "content_block_delta":
            block = self.blocks.get(event.get("index"))
            delta = event.get("delta")
            if block is None or not isinstance(delta, dict):
                return []
            if delta.get("type") == "text_delta" and block.kind == "text":
                text = delta.get("text")
                return [self._chunk({"content": text})] if isinstance(text, str) and text else []
            if delta.get("type") == "input_json_delta" and block.kind in {"json", "call"}:
                piece = delta.get("partial_json")
                return [self._arguments(block, piece)] if isinstance(piece, str) and piece else []
            return []  # thinking, signature and citation deltas belong to blocks never asked for
        if kind == "content_block_stop":
            block = self.blocks.get(event.get("index"))
            if block is not None and block.kind in {"json", "call"} and not block.streamed:
                return [self._arguments(block, "{}")]  # a tool input with nothing in it
            return []
        if kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self.usage.output_tokens = token_count(usage.get("output_tokens")) or self.usage.output_tokens
                self.usage.input_tokens = _input_tokens(usage) or self.usage.input_tokens
            self.usage.reported = True
            delta = event.get("delta")
            stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            return [self._chunk({}, _finish_reason(stop_reason, self.calls > 0))]
        if kind == "error":
            raise stream_failure(event.get("error"))
        return []  # ping, message_stop

    def _block_start(self, index: Any, content_block: Any) -> list[dict[str, Any]]:
        block = content_block if isinstance(content_block, dict) else {}
        kind = block.get("type")
        if kind == "text":
            self.blocks[index] = _Block("text")
            text = block.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind != "tool_use":
            self.blocks[index] = _Block("other")
            return []
        if block.get("name") == JSON_TOOL:
            self.blocks[index] = _Block("json")
            return []
        self.blocks[index] = _Block("call", self.calls)
        self.calls += 1
        call = {
            "index": self.blocks[index].call_index,
            "id": str(block.get("id", "")),
            "type": "function",
            "function": {"name": str(block.get("name", "")), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def finish(self) -> list[dict[str, Any]]:
        if not self.include_usage:
            return []
        return [usage_chunk(self.chunk_id, self.created, self.alias, self.usage)]


def stream_failure(error: Any) -> GatewayError:
    """The GatewayError for an error event in a stream (Anthropic sends overloaded_error so, even
    as the first event after a 200): 429 for rate_limit_error, else 502."""
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    detail = f": {message[:300]}" if isinstance(message, str) and message else "."
    if kind == "rate_limit_error":
        return GatewayError(429, "upstream_rate_limited", f"The provider is rate limiting{detail}")
    return GatewayError(502, "upstream_error", f"The provider's stream failed{detail}")


# The adapter -------------------------------------------------------------------------------


class AnthropicAdapter:
    """The ProviderAdapter (gateway/providers.py) for Anthropic's Messages API."""

    name = "anthropic"
    stream_kind = "sse"

    async def chat_request(self, target: Target, body: dict[str, Any], stream: bool, fetch: Fetcher) -> Outbound:
        request = messages_request(
            body, target.deployment.upstream_model, stream=stream, output_cap=target.deployment.max_output_tokens
        )
        base = (target.credential.base_url or ANTHROPIC_BASE).rstrip("/")
        headers = {"x-api-key": target.secret, "anthropic-version": ANTHROPIC_VERSION}
        return Outbound(f"{base}/v1/messages", headers, orjson.dumps(request))

    def chat_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        return completion_from_message(document, alias)

    def stream_translator(self, alias: str, include_usage: bool) -> MessagesStreamTranslator:
        return MessagesStreamTranslator(alias, include_usage)

    async def embeddings_request(self, target: Target, body: dict[str, Any], fetch: Fetcher) -> Outbound:
        raise _no_embeddings(body.get("model"))

    def embeddings_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        raise _no_embeddings(alias)

    def error_message(self, document: Any) -> str:
        error = document.get("error") if isinstance(document, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return message if isinstance(message, str) else ""


def _no_embeddings(alias: Any) -> GatewayError:
    model = f"The model {alias[:200]!r}" if isinstance(alias, str) and alias else "This model"
    return GatewayError(400, "invalid_request", f"{model} does not offer embeddings: Anthropic has none.")


# Until gateway/upstream.py calls AnthropicAdapter ---------------------------------------------


def request_to_anthropic(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request (no deployment output cap)."""
    return messages_request(body, upstream_model, stream=bool(body.get("stream")), output_cap=None)


def response_from_anthropic(message: dict[str, Any], alias: str) -> tuple[dict[str, Any], int, int]:
    """(OpenAI chat completion, input tokens, output tokens) from an Anthropic message."""
    completion, usage = completion_from_message(message, alias)
    return completion, usage.input_tokens, usage.output_tokens


class AnthropicStreamTranslator(MessagesStreamTranslator):
    """MessagesStreamTranslator as the old relay in upstream.py reads it: the usage chunk comes
    right after the finish chunk, and the counts are attributes of their own."""

    @property
    def input_tokens(self) -> int:
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int:
        return self.usage.output_tokens

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        chunks = super().feed(event)
        return chunks + super().finish() if event.get("type") == "message_delta" else chunks

    def finish(self) -> list[dict[str, Any]]:
        return []

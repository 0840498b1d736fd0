"""AWS Bedrock upstream: chat through Converse / ConverseStream, embeddings through Amazon
Titan text embeddings (InvokeModel), every request SigV4 signed with botocore.

The credential holds an access key id and its secret (Target.secret), a region and, optionally,
a role ARN. With a role, the key is first exchanged for short-lived keys with STS AssumeRole
(one hour, cached per credential until five minutes before they expire). STS is asked at
`https://sts.{region}.amazonaws.com/`, or at `{base_url}/` when the credential has a base URL:
a custom endpoint must then also answer STS (the provider simulator does).

Requests go to `{base_url or https://bedrock-runtime.{region}.amazonaws.com}/model/{model}/converse`
(`/converse-stream` for streams, `/invoke` for embeddings), the model id URL-quoted. A stream's
answer is binary AWS event-stream frames: `event_decoder()` turns its bytes into events and
`stream_translator()` turns those into chat.completion.chunk objects.

How each chat-completions parameter reaches Bedrock:

| Parameter                          | Bedrock Converse                                                   |
|------------------------------------|--------------------------------------------------------------------|
| messages: system, developer        | `system` text blocks, in order, wherever they stood                |
| messages: user, assistant          | `messages`; consecutive turns of one role are merged into one      |
| content text parts                 | `{text}` blocks (empty assistant text is left out)                 |
| image_url, data: URL               | `{image: {format: png/jpeg/gif/webp, source: {bytes}}}`            |
| image_url, http(s) URL             | refused: Bedrock cannot fetch URLs                                 |
| image_url.detail                   | no counterpart: ignored                                            |
| input_audio, file parts            | refused                                                            |
| assistant tool_calls               | `toolUse {toolUseId, name, input}`                                 |
| tool messages                      | `toolResult {toolUseId, content: [{text}]}` in a user turn         |
| tools (functions)                  | `toolConfig.tools[].toolSpec {name, description, inputSchema}`     |
| tool_choice auto / absent          | Bedrock's default (auto): `toolChoice` left out                    |
| tool_choice required / {function}  | `toolChoice {any: {}}` / `{tool: {name}}`                          |
| tool_choice none                   | the tools are left out (refused if the conversation has tool calls)|
| parallel_tool_calls                | true: Bedrock's behaviour; false: refused                          |
| max_completion_tokens, max_tokens  | `inferenceConfig.maxTokens` (the first one given, in that order)   |
| temperature, top_p, stop           | `inferenceConfig.temperature`, `.topP`, `.stopSequences`           |
| response_format json_object        | a forced tool `json_answer` ({"type": "object"}); its input is the |
|                                    | answer's text, finish_reason "stop" (streams too)                  |
| response_format json_schema        | the same, with the schema as the tool's input schema               |
| n                                  | 1 only (the gateway fans out n > 1); anything else refused         |
| stream, stream_options             | `/converse-stream`; usage from the `metadata` event                |
| user                               | no counterpart (an end-user id for OpenAI's abuse checks): ignored |
| logprobs, top_logprobs, logit_bias,| refused unless given their default value (false, 0, {})            |
| seed, presence/frequency_penalty,  |                                                                    |
| anything else                      | refused with a 400 naming it                                       |

JSON mode reserves the tool name `json_answer`: a client tool of that name is refused, because
answers are told apart by it. Reasoning content a model streams is not relayed.

Embeddings (Titan text, one input per call): `input` (a string or a list of one string; more
than one is refused), `dimensions` (Titan v2), `encoding_format` (Titan answers floats; turning
them into base64 when asked is the gateway's job, as for every non-OpenAI provider), `user`
(ignored). Titan v1 models take neither `dimensions` nor `normalize`.
"""

import asyncio
import hashlib
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from xml.etree import ElementTree

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, ParserError

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

PROVIDER = "bedrock"
SERVICE = "bedrock"  # the SigV4 signing name of bedrock-runtime
JSON_TOOL = "json_answer"
STS_VERSION = "2011-06-15"
ROLE_SESSION_NAME = "gatehouse"
ROLE_SECONDS = 3600
ROLE_REFRESH_MARGIN = 300  # seconds before expiry when cached role keys are renewed
STS_ANSWER_LIMIT = 64 * 1024
ROLE_CACHE_LIMIT = 1024
MESSAGE_LIMIT = 300  # characters of a provider's own words kept in an error

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}

# Chat parameters translated or handled here; any other one is refused unless it holds its
# OpenAI default (or null), which asks for nothing Bedrock would have to do.
CHAT_PARAMETERS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "user",
        "parallel_tool_calls",
    }
)
HARMLESS_DEFAULTS: dict[str, Any] = {
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "presence_penalty": 0,
    "frequency_penalty": 0,
}
REFUSAL_HINTS = {
    "logprobs": "Bedrock Converse returns no log probabilities.",
    "top_logprobs": "Bedrock Converse returns no log probabilities.",
    "seed": "Bedrock Converse takes no seed.",
    "functions": "Use tools instead.",
    "function_call": "Use tool_choice instead.",
}
EMBEDDING_PARAMETERS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


# Keys and signing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsKeys:
    access_key_id: str
    secret: str
    session_token: str = ""
    expires_at: float = 0.0  # Unix seconds; 0 for long-term keys


def host_header(url: str) -> str:
    """The Host value gateway/http_client.py sends for a URL, so the signed value is the sent one."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        raise GatewayError(502, "upstream_error", "The Bedrock endpoint URL is not valid.") from None
    if not host or parts.scheme not in ("http", "https"):
        raise GatewayError(502, "upstream_error", "The Bedrock endpoint URL is not valid.")
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def sign(url: str, payload: bytes, keys: AwsKeys, region: str, service: str, content_type: str) -> dict[str, str]:
    """Headers for a SigV4-signed POST of exactly `payload`: host, X-Amz-Date, the session token
    if any, Authorization; and Content-Type, sent but not signed so a client may spell it its way."""
    request = AWSRequest(method="POST", url=url, data=payload, headers={"host": host_header(url)})
    credentials = Credentials(keys.access_key_id, keys.secret, keys.session_token or None)
    SigV4Auth(credentials, service, region).add_auth(request)
    headers = {str(name): str(value) for name, value in request.headers.items()}
    headers["Content-Type"] = content_type
    return headers


def _scrubbed(message: str, secrets: tuple[str, ...]) -> str:
    """An error text with every secret cut out (a provider may echo what it was sent)."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    return message


def _xml_text(root: ElementTree.Element, name: str) -> str:
    """The text of the first element called `name`, whatever its XML namespace."""
    for element in root.iter():
        if element.tag == name or element.tag.endswith("}" + name):
            return (element.text or "").strip()
    return ""


def _parse_xml(answer: bytes) -> ElementTree.Element | None:
    """An STS answer as XML, or None. The answer comes from the configured endpoint: it is kept
    small and may declare no entities (xml.etree expands internal ones)."""
    if len(answer) > STS_ANSWER_LIMIT or b"<!" in answer:
        return None
    try:
        return ElementTree.fromstring(answer)  # noqa: S314  (bounded, no DTD; see above)
    except ElementTree.ParseError:
        return None


def role_keys_from_sts(answer: bytes) -> AwsKeys | None:
    """The temporary keys of an AssumeRole answer, or None if it holds none."""
    root = _parse_xml(answer)
    if root is None:
        return None
    access_key_id, secret = _xml_text(root, "AccessKeyId"), _xml_text(root, "SecretAccessKey")
    token, expiration = _xml_text(root, "SessionToken"), _xml_text(root, "Expiration")
    try:
        expires = datetime.fromisoformat(expiration)
    except ValueError:
        return None
    expires_at = (expires if expires.tzinfo else expires.replace(tzinfo=UTC)).timestamp()  # STS speaks UTC
    if not (access_key_id and secret and token):
        return None
    return AwsKeys(access_key_id, secret, token, expires_at)


def sts_error(answer: bytes) -> str:
    """`Code: Message` of an STS error answer, or ""."""
    root = _parse_xml(answer)
    if root is None:
        return ""
    code, message = _xml_text(root, "Code"), _xml_text(root, "Message")
    return ": ".join(part for part in (code, message) if part)[:MESSAGE_LIMIT]


# Chat requests ------------------------------------------------------------------------------


def _check_parameters(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if name in CHAT_PARAMETERS or value is None:
            continue
        if name in HARMLESS_DEFAULTS and value == HARMLESS_DEFAULTS[name]:
            continue
        raise unsupported(name, PROVIDER, REFUSAL_HINTS.get(name, ""))
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", PROVIDER, "Ask for one choice at a time.")
    if body.get("parallel_tool_calls") is False:
        raise unsupported("parallel_tool_calls", PROVIDER, "Bedrock cannot be told to call one tool at a time.")


def _text_parts(content: Any, role: str) -> list[str]:
    """The texts of a message's content; any other part is refused."""
    if isinstance(content, str):
        return [content]
    if content is None:
        return []
    if not isinstance(content, list):
        raise invalid_request(f"The content of a {role} message must be a string or a list of parts.")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            texts.append(str(part.get(kind) or ""))
        else:
            raise unsupported(str(kind or "content"), PROVIDER, f"A {role} message may only hold text.")
    return texts


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise invalid_request("An image_url part needs a url.")
    if not url.startswith("data:"):
        raise unsupported(
            "image_url", PROVIDER, "Bedrock cannot fetch image URLs: send the image as a data: URL (base64)."
        )
    media_type, data, base64_encoded = split_data_url(url) or ("", "", False)
    image_format = IMAGE_FORMATS.get(media_type)
    if image_format is None or not base64_encoded or not data:
        raise unsupported("image_url", PROVIDER, "Images must be base64 data: URLs of PNG, JPEG, GIF or WebP.")
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise invalid_request("The content of a user message must be a string or a list of parts.")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"text": str(part.get("text") or "")})
        elif kind == "image_url":
            blocks.append(_image_block(part))
        else:
            raise unsupported(str(kind or "content"), PROVIDER, "User messages may hold text and images.")
    return blocks


def _tool_use(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise unsupported("tool_calls", PROVIDER, "Only function tool calls can be sent.")
    arguments = tool_input(function.get("arguments"), "tool_calls.function.arguments")
    return {
        "toolUse": {"toolUseId": str(call.get("id") or ""), "name": str(function.get("name") or ""), "input": arguments}
    }


def _conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """(system blocks, Converse messages, whether tool calls or results appear)."""
    if not isinstance(messages, list) or not messages:
        raise invalid_request("messages must be a non-empty list.")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    has_tools = False
    for message in messages:
        if not isinstance(message, dict):
            raise invalid_request("Each message must be an object.")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _text_parts(content, str(role)) if text)
            continue
        if role == "user":
            turn_role, blocks = "user", _user_blocks(content)
        elif role == "assistant":
            if message.get("function_call") is not None:
                raise unsupported("function_call", PROVIDER, REFUSAL_HINTS["function_call"])
            blocks = [{"text": text} for text in _text_parts(content, "assistant") if text]
            calls = message.get("tool_calls") or []
            blocks.extend(_tool_use(call) for call in calls)
            has_tools = has_tools or bool(calls)
            turn_role = "assistant"
        elif role == "tool":
            text = "".join(_text_parts(content, "tool"))
            result = {"toolUseId": str(message.get("tool_call_id") or ""), "content": [{"text": text}]}
            turn_role, blocks, has_tools = "user", [{"toolResult": result}], True
        else:
            raise unsupported(f"messages[].role={role}", PROVIDER)
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)  # Bedrock wants the roles to alternate
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns, has_tools


def _tool_specs(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise invalid_request("tools must be a list.")
    specs = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise unsupported("tools", PROVIDER, "Only function tools can be offered.")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_request("Each tool needs a function name.")
        if name == JSON_TOOL:
            raise unsupported("tools", PROVIDER, f"The tool name {JSON_TOOL!r} is reserved for JSON mode.")
        spec: dict[str, Any] = {
            "name": name,
            "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}},
        }
        if function.get("description"):
            spec["description"] = str(function["description"])
        specs.append({"toolSpec": spec})
    return specs


def _json_schema(response_format: Any) -> dict[str, Any] | None:
    """The schema the answer must follow, or None for a text answer."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {"type": "object"}
    raise unsupported("response_format", PROVIDER, "Use text, json_object or json_schema.")


def _tool_config(body: dict[str, Any], has_tool_history: bool) -> dict[str, Any] | None:
    schema = _json_schema(body.get("response_format"))
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice == "none":
        if has_tool_history:
            raise unsupported("tool_choice", PROVIDER, '"none" cannot be kept in a conversation with tool calls.')
        tools = None
    if schema is not None:
        if tools:
            raise unsupported("response_format", PROVIDER, "JSON mode cannot be combined with tools on Bedrock.")
        spec = {"name": JSON_TOOL, "description": "Give the answer as JSON.", "inputSchema": {"json": schema}}
        return {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": JSON_TOOL}}}
    if not tools:
        if choice == "required" or isinstance(choice, dict):
            raise invalid_request("tool_choice asks for a tool, but no tools are given.")
        return None
    config: dict[str, Any] = {"tools": _tool_specs(tools)}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type", "function") != "function" or not isinstance(name, str):
            raise unsupported("tool_choice", PROVIDER, "Name a function tool.")
        if name not in {spec["toolSpec"]["name"] for spec in config["tools"]}:
            raise invalid_request(f"tool_choice names {name!r}, which is not among the tools.")
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice not in (None, "auto"):
        raise invalid_request("tool_choice must be none, auto, required or a function.")
    return config


def _number(body: dict[str, Any], name: str) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_request(f"{name} must be a number.")
    return value


def converse_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as a Converse request body (the model goes in the URL)."""
    _check_parameters(body)
    system, messages, has_tool_history = _conversation(body.get("messages"))
    request: dict[str, Any] = {"messages": messages}
    if system:
        request["system"] = system
    inference: dict[str, Any] = {}
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise invalid_request("max_tokens must be a positive integer.")
        inference["maxTokens"] = limit
    temperature, top_p = _number(body, "temperature"), _number(body, "top_p")
    if temperature is not None:
        inference["temperature"] = temperature
    if top_p is not None:
        inference["topP"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise invalid_request("stop must be a string or a list of strings.")
        inference["stopSequences"] = stop
    if inference:
        request["inferenceConfig"] = inference
    tool_config = _tool_config(body, has_tool_history)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    return request


# Chat answers -------------------------------------------------------------------------------


def _arguments(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def chat_from_converse(document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
    """(chat completion, reported usage) from a Converse answer."""
    output = document.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise GatewayError(502, "upstream_error", "The provider's answer held no message.")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    json_text: str | None = None
    for block in content:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        tool_use = block.get("toolUse")
        if isinstance(tool_use, dict):
            if tool_use.get("name") == JSON_TOOL:
                json_text = _arguments(tool_use.get("input"))
                continue
            tool_calls.append(
                {
                    "id": str(tool_use.get("toolUseId") or ""),
                    "type": "function",
                    "function": {
                        "name": str(tool_use.get("name") or ""),
                        "arguments": _arguments(tool_use.get("input")),
                    },
                }
            )
    finish = STOP_REASONS.get(str(document.get("stopReason")), "stop")
    if finish == "tool_calls" and not tool_calls:
        finish = "stop"  # the JSON-mode tool answered
    text = json_text if json_text is not None else "".join(texts)
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    reported = document.get("usage")
    usage = Usage()
    if isinstance(reported, dict):
        usage = Usage(token_count(reported.get("inputTokens")), token_count(reported.get("outputTokens")), True)
    completion = {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }
    return completion, usage


class ConverseStreamTranslator:
    """Feeds on decoded ConverseStream events, yields chat.completion.chunk objects."""

    def __init__(self, alias: str, include_usage: bool):
        self.alias, self.include_usage = alias, include_usage
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.usage = Usage()
        self._started = False
        self._tool_indexes: dict[int, int] = {}  # content block index -> tool call index
        self._json_blocks: set[int] = set()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chat_chunk(self.id, self.created, self.alias, delta, finish)

    def _start(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "metadata":
            reported = event.get("usage")
            if isinstance(reported, dict):
                self.usage = Usage(
                    token_count(reported.get("inputTokens")), token_count(reported.get("outputTokens")), True
                )
            return []
        if kind not in ("messageStart", "contentBlockStart", "contentBlockDelta", "messageStop"):
            return []  # contentBlockStop and events this gateway does not relay
        chunks = self._start()
        index = event.get("contentBlockIndex")
        block = index if isinstance(index, int) else -1
        if kind == "contentBlockStart":
            start = event.get("start")
            tool_use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(tool_use, dict):
                name = str(tool_use.get("name") or "")
                if name == JSON_TOOL:
                    self._json_blocks.add(block)
                else:
                    position = self._tool_indexes[block] = len(self._tool_indexes)
                    call = {
                        "index": position,
                        "id": str(tool_use.get("toolUseId") or ""),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                    chunks.append(self._chunk({"tool_calls": [call]}))
        elif kind == "contentBlockDelta":
            delta = event.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            tool_use = delta.get("toolUse")
            if isinstance(delta.get("text"), str) and delta["text"]:
                chunks.append(self._chunk({"content": delta["text"]}))
            elif isinstance(tool_use, dict) and isinstance(tool_use.get("input"), str):
                piece = tool_use["input"]
                if block in self._json_blocks:
                    chunks.append(self._chunk({"content": piece}))
                elif block in self._tool_indexes:
                    call = {"index": self._tool_indexes[block], "function": {"arguments": piece}}
                    chunks.append(self._chunk({"tool_calls": [call]}))
        elif kind == "messageStop":
            finish = STOP_REASONS.get(str(event.get("stopReason")), "stop")
            if finish == "tool_calls" and not self._tool_indexes:
                finish = "stop"  # the JSON-mode tool answered
            chunks.append(self._chunk({}, finish))
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        return [usage_chunk(self.id, self.created, self.alias, self.usage)] if self.include_usage else []


# The AWS event stream -----------------------------------------------------------------------


def _stream_failure(kind: str, message: str) -> GatewayError:
    detail = f": {message[:MESSAGE_LIMIT]}" if message else ""
    if kind == "throttlingException":
        return GatewayError(429, "upstream_rate_limited", f"The provider is rate limiting{detail}")
    return GatewayError(502, "upstream_error", f"The provider's stream failed ({kind[:80]}){detail}")


class EventStreamDecoder:
    """Bytes of an `application/vnd.amazon.eventstream` answer in, events out, as frames complete:
    each event is `{"type": <:event-type>, **payload}`. A frame the provider marks as an
    exception raises GatewayError (429 for throttling, else 502) with the provider's words; if
    events came before it in the same bytes, they are returned first and the error is raised by
    the next `feed` or by `finish`, which the caller calls when the answer ends."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._pending: GatewayError | None = None
        self._buffered = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._pending is not None:
            raise self._pending
        self._buffer.add_data(data)
        self._buffered += len(data)
        events: list[dict[str, Any]] = []
        try:
            for message in self._buffer:
                self._buffered -= message.prelude.total_length
                events.append(self._event(message.headers, message.payload))
        except GatewayError as error:
            self._pending = error
            if not events:
                raise
        except (ParserError, KeyError, IndexError, ValueError, struct.error):
            self._pending = GatewayError(
                502, "upstream_error", "The provider's stream was not a valid AWS event stream."
            )
            if not events:
                raise self._pending from None
        return events

    def finish(self) -> None:
        """Raise what the end of the answer reveals: a held-back exception, or a cut-off frame."""
        if self._pending is not None:
            raise self._pending
        if self._buffered:
            raise GatewayError(502, "upstream_error", "The provider's stream ended in the middle of an event.")

    @staticmethod
    def _event(headers: dict[str, Any], payload: bytes) -> dict[str, Any]:
        message_type = headers.get(":message-type", "event")
        try:
            document = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            document = None
        if message_type == "exception":
            words = (document.get("message") or document.get("Message")) if isinstance(document, dict) else ""
            raise _stream_failure(str(headers.get(":exception-type") or "exception"), str(words or ""))
        if message_type == "error":
            raise _stream_failure(str(headers.get(":error-code") or "error"), str(headers.get(":error-message") or ""))
        if not isinstance(document, dict):
            raise GatewayError(502, "upstream_error", "The provider's stream held an event that is not a JSON object.")
        return {**document, "type": str(headers.get(":event-type") or "")}


# The adapter --------------------------------------------------------------------------------


class BedrockAdapter:
    name = PROVIDER
    stream_kind = "aws-eventstream"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._role_keys: dict[tuple[str, ...], AwsKeys] = {}
        self._role_locks: dict[tuple[str, ...], asyncio.Lock] = {}

    # Keys

    @staticmethod
    def _region(target: Target) -> str:
        if not target.credential.region:
            raise GatewayError(502, "upstream_error", "The Bedrock credential names no AWS region.")
        return target.credential.region

    async def keys(self, target: Target, fetch: Fetcher) -> AwsKeys:
        """The keys to sign with: the credential's own, or role keys from STS (cached)."""
        credential = target.credential
        if not credential.access_key_id or not target.secret:
            raise GatewayError(502, "upstream_error", "The Bedrock credential has no access key.")
        own = AwsKeys(credential.access_key_id, target.secret)
        if not credential.role_arn:
            return own
        cache_key = (
            credential.id,
            credential.access_key_id,
            credential.role_arn,
            credential.region,
            credential.base_url,
            hashlib.sha256(target.secret.encode()).hexdigest(),  # a rotated secret asks again
        )
        cached = self._role_keys.get(cache_key)
        if cached is not None and cached.expires_at - ROLE_REFRESH_MARGIN > self._clock():
            return cached
        lock = self._role_locks.setdefault(cache_key, asyncio.Lock())
        async with lock:  # one exchange at a time per credential; the others wait for its keys
            cached = self._role_keys.get(cache_key)
            if cached is not None and cached.expires_at - ROLE_REFRESH_MARGIN > self._clock():
                return cached
            keys = await self._assume_role(target, own, fetch)
            if len(self._role_keys) >= ROLE_CACHE_LIMIT:
                self._role_keys.clear()
                self._role_locks = {cache_key: lock}
            self._role_keys[cache_key] = keys
            return keys

    async def _assume_role(self, target: Target, own: AwsKeys, fetch: Fetcher) -> AwsKeys:
        credential = target.credential
        region = self._region(target)
        base = credential.base_url.rstrip("/")
        url = f"{base}/" if base else f"https://sts.{region}.amazonaws.com/"
        form = urlencode(
            {
                "Action": "AssumeRole",
                "RoleArn": credential.role_arn,
                "RoleSessionName": ROLE_SESSION_NAME,
                "Version": STS_VERSION,
                "DurationSeconds": str(ROLE_SECONDS),
            }
        ).encode()
        headers = sign(url, form, own, region, "sts", "application/x-www-form-urlencoded; charset=utf-8")
        failed = f"AWS STS did not let the credential assume the role {credential.role_arn}"
        try:
            status, answer = await fetch(url, headers, form)
        except OSError as error:
            raise GatewayError(502, "upstream_error", f"{failed} (STS unreachable: {type(error).__name__}).") from None
        keys = role_keys_from_sts(answer) if status == 200 else None
        if keys is None:
            detail = sts_error(answer) if status != 200 else "the answer held no keys"
            message = f"{failed} ({status}{': ' + detail if detail else ''})."
            raise GatewayError(502, "upstream_error", _scrubbed(message, (target.secret,)))
        return keys

    # Requests

    def _url(self, target: Target, operation: str) -> str:
        base = target.credential.base_url.rstrip("/") or f"https://bedrock-runtime.{self._region(target)}.amazonaws.com"
        model = quote(target.deployment.upstream_model, safe="")
        return f"{base}/model/{model}/{operation}"

    async def _signed(self, target: Target, operation: str, document: dict[str, Any], fetch: Fetcher) -> Outbound:
        url = self._url(target, operation)  # checks the region before any exchange
        keys = await self.keys(target, fetch)
        payload = orjson.dumps(document)
        headers = sign(url, payload, keys, self._region(target), SERVICE, "application/json")
        return Outbound(url=url, headers=headers, payload=payload)

    async def chat_request(self, target: Target, body: dict[str, Any], stream: bool, fetch: Fetcher) -> Outbound:
        document = converse_request(body)
        return await self._signed(target, "converse-stream" if stream else "converse", document, fetch)

    def chat_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        return chat_from_converse(document, alias)

    def stream_translator(self, alias: str, include_usage: bool) -> ConverseStreamTranslator:
        return ConverseStreamTranslator(alias, include_usage)

    def event_decoder(self) -> EventStreamDecoder:
        return EventStreamDecoder()

    async def embeddings_request(self, target: Target, body: dict[str, Any], fetch: Fetcher) -> Outbound:
        for name, value in body.items():
            if name not in EMBEDDING_PARAMETERS and value is not None:
                raise unsupported(name, PROVIDER)
        text = body.get("input")
        if isinstance(text, list):
            if len(text) > 1:
                raise unsupported("input", PROVIDER, "Titan embeds one input per request: send one text per call.")
            text = text[0] if text else None
        if not isinstance(text, str):
            raise unsupported("input", PROVIDER, "Titan embeds text: token arrays cannot be sent.")
        if body.get("encoding_format") not in (None, "float", "base64"):
            raise invalid_request("encoding_format must be float or base64.")
        titan_v1 = any(name in target.deployment.upstream_model for name in ("titan-embed-text-v1", "titan-embed-g1"))
        document: dict[str, Any] = {"inputText": text}
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
                raise invalid_request("dimensions must be a positive integer.")
            if titan_v1:
                raise unsupported("dimensions", PROVIDER, "Titan text embeddings v1 has one size.")
            document["dimensions"] = dimensions
        if not titan_v1:
            document["normalize"] = True  # as OpenAI's vectors are
        return await self._signed(target, "invoke", document, fetch)

    def embeddings_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        vector = document.get("embedding")
        if not isinstance(vector, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in vector
        ):
            raise GatewayError(502, "upstream_error", "The provider's answer held no embedding.")
        tokens = token_count(document.get("inputTextTokenCount"))
        usage = Usage(tokens, 0, "inputTextTokenCount" in document)
        answer = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": alias,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return answer, usage

    def error_message(self, document: Any) -> str:
        if not isinstance(document, dict):
            return ""
        message = document.get("message") or document.get("Message")
        return message[:MESSAGE_LIMIT] if isinstance(message, str) else ""

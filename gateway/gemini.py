"""Google upstreams: the Gemini API (an API key) and Vertex AI (a service-account JSON key).

Both speak Google's generateContent format and differ in the URL, the authentication and the
embeddings method: the Gemini API answers `batchEmbedContents` and reports no tokens for it,
Vertex AI answers `predict` with a token count per text. Vertex AI wants an OAuth access
token, got by signing a JWT with the service account's key and trading it at its token URI;
the token is cached per credential until five minutes before it expires.

How each OpenAI chat parameter reaches Google (`unsupported` is the 400 naming the parameter):

| OpenAI parameter | Gemini API and Vertex AI |
| --- | --- |
| messages: system, developer | systemInstruction, one text part each, in order |
| messages: user / assistant | contents with role user / model |
| text and refusal parts | text parts |
| image_url, data: URL | inlineData {mimeType, data} |
| image_url, http(s) or gs:// URL | fileData {mimeType from the extension, fileUri}: Google fetches it (1) |
| image_url.detail | not sent: Gemini picks the resolution itself (the image is sent) |
| input_audio | inlineData audio/wav or audio/mp3 |
| file with file_data (data: URL) | inlineData; a file_id is unsupported (it names an OpenAI upload) |
| assistant tool_calls | functionCall parts {name, args} with their thought signature (2) |
| tool messages | functionResponse parts {name of the earlier call, response {"content": text}} in one user turn |
| tools (type function) | tools[{functionDeclarations [{name, description, parametersJsonSchema}]}] (3) |
| tools[].function.strict | not sent: Gemini has no strict switch |
| tool_choice auto / none / required | toolConfig.functionCallingConfig.mode AUTO / NONE / ANY |
| tool_choice {function} | mode ANY, allowedFunctionNames [name] |
| tool_choice allowed_tools | only those declarations are sent; mode AUTO (auto) or ANY (required) |
| parallel_tool_calls | true: nothing to send; false: unsupported (Gemini may call several) |
| response_format text / json_object | nothing / generationConfig.responseMimeType application/json |
| response_format json_schema | responseMimeType application/json + responseJsonSchema (JSON Schema as it came) |
| n | generationConfig.candidateCount |
| max_completion_tokens, max_tokens | maxOutputTokens, at most the deployment's output cap (4) |
| temperature, top_p, stop, seed | temperature, topP, stopSequences, seed |
| presence_penalty, frequency_penalty | presencePenalty, frequencyPenalty |
| logprobs, top_logprobs | responseLogprobs, logprobs; logprobsResult comes back as choices[].logprobs |
| reasoning_effort | thinkingConfig.thinkingBudget (5) |
| top_k (not OpenAI's, often sent) | topK |
| stream, stream_options.include_usage | :streamGenerateContent?alt=sse; the usage chunk from the last usageMetadata |
| user, safety_identifier, prompt_cache_key, metadata | not sent: identifiers that change no answer |
| store | false: nothing; true: unsupported |
| service_tier | auto / default: nothing; others unsupported |
| modalities | ["text"]: nothing; others unsupported |
| logit_bias, audio, prediction, web_search_options, verbosity, functions, function_call | unsupported |
| any other key | unsupported |

(1) Unsupported when the URL's extension names no image type: Google must be told the type.
(2) The signature Google gave travels in tool_calls[].extra_content.google.thought_signature, as
    Google's own OpenAI-compatible endpoint puts it; a call without one (history rebuilt by a
    client) gets Google's documented "skip" signature on the first call of its turn.
(3) JSON Schema as it came (no cleaning needed); tools of other types are unsupported.
(4) The cap when absent: the bound the budget reservation counted on.
(5) none 0, minimal 512, low 1024, medium 8192, high 24576 (Google's OpenAI mapping, plus minimal).

Answers: candidates become choices; finishReason STOP becomes stop, MAX_TOKENS length, the
safety reasons content_filter, and tool_calls when a functionCall is there. promptTokenCount
is prompt_tokens; candidatesTokenCount plus thoughtsTokenCount is completion_tokens.

Embeddings: input a string or strings (token arrays unsupported), dimensions as
outputDimensionality, user not sent, encoding_format float or base64 (Google sends floats; the
caller encodes them for base64, which the OpenAI SDK asks for by default), others unsupported.
"""

import asyncio
import base64
import hashlib
import mimetypes
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlencode, urlsplit

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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

GEMINI_BASE = "https://generativelanguage.googleapis.com"
VERTEX_DEFAULT_REGION = "us-central1"
VERTEX_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
TOKEN_REFRESH_MARGIN = 300  # a cached token is renewed this many seconds before it expires
# Google documents this value for function calls whose signature was lost (history rebuilt by
# a client, or written for another model): Gemini 3 refuses a call turn without any signature.
SKIP_SIGNATURE = "skip_thought_signature_validator"
CACHE_LIMIT = 256

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}

# Keys that ask for nothing Google needs: identifiers and bookkeeping that change no answer.
NOT_SENT = frozenset({"model", "user", "safety_identifier", "prompt_cache_key", "metadata"})
CHAT_TRANSLATED = frozenset(
    {
        "messages",
        "stream",
        "stream_options",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "response_format",
        "tools",
        "tool_choice",
    }
)
CONDITIONALLY_ACCEPTED = frozenset({"logit_bias", "store", "parallel_tool_calls", "service_tier", "modalities"})
ALWAYS_REFUSED = frozenset({"audio", "prediction", "web_search_options", "verbosity", "functions", "function_call"})
REFUSAL_HINTS = {
    "functions": "Use 'tools' and 'tool_choice'.",
    "function_call": "Use 'tools' and 'tool_choice'.",
    "logit_bias": "Gemini has no token biases.",
    "parallel_tool_calls": "Gemini may call several functions in one turn; only true can be honoured.",
    "store": "Gemini stores no completions for later retrieval.",
    "encoding_format": "Ask for 'float' or 'base64' embeddings.",
}
REGION = re.compile(r"[a-z0-9-]{1,40}")
PROJECT = re.compile(r"[a-z0-9.:-]{1,100}")


def _refuse(name: str, provider: str) -> GatewayError:
    return unsupported(name, provider, REFUSAL_HINTS.get(name, ""))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Requests ---------------------------------------------------------------------------------


def _data_url(url: str, field: str) -> dict[str, str]:
    """An inlineData part from a data: URL."""
    parts = split_data_url(url)
    if parts is None:
        raise invalid_request(f"{field} is not a valid data: URL.")
    mime_type, data, base64_encoded = parts
    if not mime_type:
        raise invalid_request(f"{field} must name its media type (data:image/png;base64,...).")
    if not base64_encoded:  # percent-encoded bytes: Google wants base64
        data = base64.b64encode(unquote_to_bytes(data)).decode()
    return {"mimeType": mime_type, "data": data}


def _image_part(part: dict[str, Any], field: str, provider: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid_request(f"{field}.image_url.url must be a string.")
    if url.startswith("data:"):
        return {"inlineData": _data_url(url, f"{field}.image_url.url")}
    scheme = urlsplit(url).scheme.lower()
    if scheme in {"http", "https", "gs"}:
        mime_type, _ = mimetypes.guess_type(urlsplit(url).path)
        if mime_type is None or not mime_type.startswith("image/"):
            raise unsupported(
                "image_url",
                provider,
                "Google fetches an image URL only when told its type, and this URL's file extension names"
                " none: send the image as a data: URL, or a URL ending in .png, .jpg, .webp or .gif.",
            )
        return {"fileData": {"mimeType": mime_type, "fileUri": url}}
    raise invalid_request(f"{field}.image_url.url must be a data:, http(s) or gs:// URL.")


def _user_parts(content: Any, field: str, provider: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        return [{"text": ""}] if content is None else [{"text": str(content)}]
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        where = f"{field}[{index}]"
        if not isinstance(part, dict):
            raise invalid_request(f"{where} must be an object.")
        kind = part.get("type")
        if kind in {"text", "input_text", "refusal"}:
            parts.append({"text": str(part.get("text", part.get("refusal", "")) or "")})
        elif kind == "image_url":
            parts.append(_image_part(part, where, provider))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime_type = AUDIO_FORMATS.get(str(audio.get("format", "")).lower())
            if mime_type is None or not isinstance(audio.get("data"), str):
                raise invalid_request(f"{where}.input_audio needs base64 'data' and a 'format' of wav or mp3.")
            parts.append({"inlineData": {"mimeType": mime_type, "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file") or {}
            data = file.get("file_data")
            if file.get("file_id") and not data:
                raise unsupported("file_id", provider, "An OpenAI file id names nothing Google holds: send file_data.")
            if not isinstance(data, str) or not data.startswith("data:"):
                raise invalid_request(f"{where}.file.file_data must be a data: URL.")
            parts.append({"inlineData": _data_url(data, f"{where}.file.file_data")})
        else:
            raise unsupported(f"{field}[].type={kind}", provider)
    return parts or [{"text": ""}]


def _text_of(content: Any, field: str, provider: str) -> str:
    """The text of a system, developer or tool message."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in {"text", "input_text"}:
                raise unsupported(f"{field} with non-text parts", provider)
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    return str(content)


def _tool_call_parts(message: dict[str, Any], field: str, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid_request(f"{field}.tool_calls[{index}] needs a function with a name.")
        arguments = tool_input(function.get("arguments"), f"{field}.tool_calls[{index}].function.arguments")
        names[str(call.get("id", ""))] = function["name"]
        part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": arguments}}
        extra = call.get("extra_content")
        google = extra.get("google") if isinstance(extra, dict) else None
        signature = google.get("thought_signature") if isinstance(google, dict) else None
        if isinstance(signature, str) and signature:
            part["thoughtSignature"] = signature
        elif not parts:
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _contents(body: dict[str, Any], provider: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(contents, system instruction parts) for the messages."""
    system: list[dict[str, str]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, for the function responses
    for index, message in enumerate(body.get("messages") or []):
        field = f"messages[{index}]"
        role = message.get("role")
        content = message.get("content")
        if role in {"system", "developer"}:
            system.append({"text": _text_of(content, f"{field}.content", provider)})
        elif role == "user":
            contents.append({"role": "user", "parts": _user_parts(content, f"{field}.content", provider)})
        elif role == "assistant":
            if message.get("audio"):
                raise unsupported(f"{field}.audio", provider)
            parts = [] if content in (None, "", []) else _user_parts(content, f"{field}.content", provider)
            parts += _tool_call_parts(message, field, call_names)
            contents.append({"role": "model", "parts": parts or [{"text": ""}]})
        elif role == "tool":
            call_id = str(message.get("tool_call_id", ""))
            if call_id not in call_names:
                raise invalid_request(f"{field}.tool_call_id {call_id[:64]!r} answers no earlier tool call.")
            response = {
                "functionResponse": {
                    "name": call_names[call_id],
                    "response": {"content": _text_of(content, f"{field}.content", provider)},
                }
            }
            last = contents[-1] if contents else None
            if last is not None and last["role"] == "user" and all("functionResponse" in p for p in last["parts"]):
                last["parts"].append(response)  # answers to one turn's calls travel together
            else:
                contents.append({"role": "user", "parts": [response]})
        else:
            raise invalid_request(f"{field} has an unknown role.")
    return contents, system


def _tool_declarations(tools: Any, provider: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise invalid_request("'tools' must be a list.")
    declarations = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise unsupported(f"tools[{index}].type={kind}", provider, "Only function tools can be translated.")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid_request(f"tools[{index}].function needs a name.")
        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = str(function["description"])
        if isinstance(function.get("parameters"), dict):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return declarations


def _tool_config(
    choice: Any, declarations: list[dict[str, Any]], provider: str
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(the declarations to send, toolConfig) for a tool_choice."""
    if choice is None or choice == "auto":
        return declarations, None
    if choice == "none":
        return declarations, {"functionCallingConfig": {"mode": "NONE"}}
    if choice == "required":
        return declarations, {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise invalid_request("tool_choice.function needs a name.")
        return declarations, {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = {
            (tool.get("function") or {}).get("name") for tool in allowed.get("tools") or [] if isinstance(tool, dict)
        }
        mode = {"auto": "AUTO", "required": "ANY"}.get(allowed.get("mode", "auto"))
        if mode is None:
            raise invalid_request("tool_choice.allowed_tools.mode must be auto or required.")
        kept = [declaration for declaration in declarations if declaration["name"] in names]
        return kept, {"functionCallingConfig": {"mode": mode}}
    raise unsupported("tool_choice", provider)


def _generation_config(body: dict[str, Any], max_output_tokens: int, provider: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    config["maxOutputTokens"] = max_output_tokens
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        config["maxOutputTokens"] = min(asked, max_output_tokens)
    n = body.get("n")
    if n is not None and n != 1:
        config["candidateCount"] = n
    for name, google_name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = body.get(name)
        if value is not None:
            if not _is_number(value):
                raise invalid_request(f"'{name}' must be a number.")
            config[google_name] = value
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise invalid_request("'seed' must be a whole number.")
        config["seed"] = seed
    stop = body.get("stop")
    if stop:
        if not isinstance(stop, str | list) or not all(isinstance(item, str) for item in stop):
            raise invalid_request("'stop' must be a string or a list of strings.")
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("logprobs"):
        config["responseLogprobs"] = True
        top = body.get("top_logprobs")
        if top:
            config["logprobs"] = top
    elif body.get("top_logprobs"):
        raise invalid_request("'top_logprobs' needs 'logprobs': true.")
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            raise unsupported(f"reasoning_effort={effort}", provider)
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            config["responseMimeType"] = "application/json"
            schema = (response_format.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                config["responseJsonSchema"] = schema
        elif kind != "text":
            raise unsupported(f"response_format.type={kind}", provider)
    return config


def _refuse_unknown(body: dict[str, Any], provider: str) -> None:
    """Every key Google cannot honour is refused by name, never dropped."""
    for name, value in body.items():
        if value is None or name in NOT_SENT or name in CHAT_TRANSLATED:
            continue
        refused = (
            name in ALWAYS_REFUSED
            or (name == "logit_bias" and bool(value))
            or (name == "store" and value is not False)
            or (name == "parallel_tool_calls" and value is not True)
            or (name == "service_tier" and value not in {"auto", "default"})
            or (name == "modalities" and value != ["text"])
            or name not in CONDITIONALLY_ACCEPTED
        )
        if refused:
            raise _refuse(name, provider)


def chat_payload(body: dict[str, Any], max_output_tokens: int, provider: str) -> dict[str, Any]:
    """An OpenAI chat-completions body as a generateContent request."""
    _refuse_unknown(body, provider)
    contents, system = _contents(body, provider)
    payload: dict[str, Any] = {"contents": contents}
    if system:
        payload["systemInstruction"] = {"parts": system}
    if body.get("tool_choice") not in (None, "none", "auto") and not body.get("tools"):
        raise invalid_request("'tool_choice' needs 'tools'.")
    if body.get("tools"):
        declarations, tool_config = _tool_config(
            body.get("tool_choice"), _tool_declarations(body["tools"], provider), provider
        )
        if declarations:
            payload["tools"] = [{"functionDeclarations": declarations}]
        if tool_config is not None:
            payload["toolConfig"] = tool_config
    payload["generationConfig"] = _generation_config(body, max_output_tokens, provider)
    return payload


def _embedding_texts(body: dict[str, Any], provider: str) -> tuple[list[str], int | None]:
    for name, value in body.items():
        if value is None or name in {"input", "model", "user", "dimensions"}:
            continue
        if name == "encoding_format" and value in {"float", "base64"}:
            continue  # base64: the caller encodes the floats (gateway/upstream.py base64_floats)
        raise _refuse(name, provider)
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise invalid_request("'input' must be a non-empty string or list.")
    if not all(isinstance(text, str) for text in texts):
        raise unsupported("input", provider, "Send text: token arrays cannot be translated.")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (_is_int(dimensions) and dimensions > 0):
        raise invalid_request("'dimensions' must be a positive whole number.")
    return texts, dimensions


# Answers ----------------------------------------------------------------------------------


def _usage(metadata: Any) -> Usage:
    if not isinstance(metadata, dict):
        return Usage()
    return Usage(
        token_count(metadata.get("promptTokenCount")) + token_count(metadata.get("toolUsePromptTokenCount")),
        token_count(metadata.get("candidatesTokenCount")) + token_count(metadata.get("thoughtsTokenCount")),
        True,
    )


def _usage_document(usage: Usage, metadata: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if isinstance(metadata, dict):
        if token_count(metadata.get("thoughtsTokenCount")):
            document["completion_tokens_details"] = {"reasoning_tokens": metadata["thoughtsTokenCount"]}
        if token_count(metadata.get("cachedContentTokenCount")):
            document["prompt_tokens_details"] = {"cached_tokens": metadata["cachedContentTokenCount"]}
    return document


def _parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []


def _tool_call(part: dict[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    arguments = call.get("args") if isinstance(call.get("args"), dict) else {}
    tool_call: dict[str, Any] = {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": str(call.get("name", "")), "arguments": orjson.dumps(arguments).decode()},
    }
    if isinstance(part.get("thoughtSignature"), str):
        # Where Google's own OpenAI-compatible endpoint puts it, so clients that echo the
        # assistant message back keep it; Gemini 3 wants it on the next turn.
        tool_call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return tool_call


def _finish_reason(candidate: dict[str, Any], called: bool) -> str | None:
    reason = candidate.get("finishReason")
    if not reason:
        return None
    if called:
        return "tool_calls"
    return FINISH_REASONS.get(str(reason), "stop")


def _token_logprob(token: Any) -> dict[str, Any]:
    token = token if isinstance(token, dict) else {}
    text = str(token.get("token", ""))
    value = token.get("logProbability", 0.0)
    return {"token": text, "logprob": float(value) if _is_number(value) else 0.0, "bytes": list(text.encode())}


def _logprobs(candidate: dict[str, Any]) -> dict[str, Any] | None:
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for position, chosen in enumerate(result.get("chosenCandidates") or []):
        top = tops[position] if position < len(tops) and isinstance(tops[position], dict) else {}
        alternatives = [_token_logprob(token) for token in top.get("candidates") or []]
        content.append({**_token_logprob(chosen), "top_logprobs": alternatives})
    return {"content": content, "refusal": None}


def _text(parts: list[dict[str, Any]]) -> str:
    # Thought summaries (parts marked "thought") are the model's notes, not its answer.
    return "".join(str(part["text"]) for part in parts if "text" in part and not part.get("thought"))


def _candidates(document: dict[str, Any]) -> list[dict[str, Any]]:
    candidates = document.get("candidates", [])
    if not isinstance(candidates, list):
        raise GatewayError(502, "upstream_error", "The provider's answer was not a generateContent response.")
    return [candidate for candidate in candidates if isinstance(candidate, dict)]


def _candidate_index(candidate: dict[str, Any], position: int) -> int:
    index = candidate.get("index", position)  # Google leaves out an index of 0
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def _completion_id(document: dict[str, Any]) -> str:
    response_id = document.get("responseId")
    return "chatcmpl-" + (response_id if isinstance(response_id, str) and response_id else uuid.uuid4().hex[:24])


def chat_completion(document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
    """A generateContent answer as an OpenAI chat completion."""
    choices: list[dict[str, Any]] = []
    for position, candidate in enumerate(_candidates(document)):
        parts = _parts(candidate)
        tool_calls = [_tool_call(part) for part in parts if isinstance(part.get("functionCall"), dict)]
        text = _text(parts)
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        choices.append(
            {
                "index": _candidate_index(candidate, position),
                "message": message,
                "logprobs": _logprobs(candidate),
                "finish_reason": _finish_reason(candidate, bool(tool_calls)) or "stop",
            }
        )
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        )
    metadata = document.get("usageMetadata")
    usage = _usage(metadata)
    completion = {
        "id": _completion_id(document),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": sorted(choices, key=lambda choice: int(choice["index"])),
        "usage": _usage_document(usage, metadata),
    }
    return completion, usage


@dataclass
class _CandidateState:
    started: bool = False
    tool_calls: int = 0
    finished: bool = False


class GoogleStreamTranslator:
    """Feeds on streamGenerateContent events (each a GenerateContentResponse), yields
    chat.completion.chunk objects. Google sends a function call whole, never in pieces."""

    def __init__(self, alias: str, include_usage: bool):
        self.alias, self.include_usage = alias, include_usage
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.usage = Usage()
        self.candidates: dict[int, _CandidateState] = {}

    def _delta(self, state: _CandidateState, delta: dict[str, Any]) -> dict[str, Any]:
        if not state.started:
            state.started = True
            return {"role": "assistant", **delta}
        return delta

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in event:
            message = error_message(event)
            raise GatewayError(502, "upstream_error", f"The provider's stream failed: {message[:300]}")
        if isinstance(event.get("usageMetadata"), dict):
            self.usage = _usage(event["usageMetadata"])
        chunks: list[dict[str, Any]] = []
        candidates = _candidates(event)
        if not candidates and isinstance(event.get("promptFeedback"), dict):
            if event["promptFeedback"].get("blockReason"):
                state = self.candidates.setdefault(0, _CandidateState())
                state.finished = True
                chunks.append(chat_chunk(self.id, self.created, self.alias, self._delta(state, {}), "content_filter"))
            return chunks
        for position, candidate in enumerate(candidates):
            index = _candidate_index(candidate, position)
            state = self.candidates.setdefault(index, _CandidateState())
            parts = _parts(candidate)
            text = _text(parts)
            if text:
                chunk = chat_chunk(
                    self.id, self.created, self.alias, self._delta(state, {"content": text}), None, index
                )
                logprobs = _logprobs(candidate)
                if logprobs is not None:
                    chunk["choices"][0]["logprobs"] = logprobs
                chunks.append(chunk)
            calls = []
            for part in parts:
                if isinstance(part.get("functionCall"), dict):
                    calls.append({"index": state.tool_calls, **_tool_call(part)})
                    state.tool_calls += 1
            if calls:
                delta = self._delta(state, {"tool_calls": calls})
                chunks.append(chat_chunk(self.id, self.created, self.alias, delta, None, index))
            finish = _finish_reason(candidate, state.tool_calls > 0)
            if finish and not state.finished:
                state.finished = True
                chunks.append(chat_chunk(self.id, self.created, self.alias, self._delta(state, {}), finish, index))
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        if self.include_usage:
            return [usage_chunk(self.id, self.created, self.alias, self.usage)]
        return []


def error_message(document: Any) -> str:
    """Google's words from an error answer: {"error": {"message"}}, a list of those (as a
    stream sends), or an OAuth error {"error", "error_description"}."""
    if isinstance(document, list) and document:
        document = document[0]
    if not isinstance(document, dict):
        return ""
    error = document.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return message if isinstance(message, str) else ""
    if isinstance(error, str):
        description = document.get("error_description")
        return f"{error}: {description}" if isinstance(description, str) and description else error
    return ""


# Vertex AI credentials ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key: rsa.RSAPrivateKey
    private_key_id: str
    token_uri: str
    project_id: str

    def __repr__(self) -> str:  # never the key, wherever an account ends up printed
        return f"ServiceAccount({self.client_email!r})"


def _credential_error(reason: str) -> GatewayError:
    return GatewayError(
        502, "upstream_error", f"The Vertex AI credential is not a usable service-account key: {reason}."
    )


def parse_service_account(secret: str) -> ServiceAccount:
    """The fields of a service-account JSON key. Errors say what is wrong, never what is there."""
    try:
        document = orjson.loads(secret)
    except orjson.JSONDecodeError:
        raise _credential_error("it is not JSON") from None
    if not isinstance(document, dict) or document.get("type") != "service_account":
        raise _credential_error('its "type" is not "service_account"')
    for field in ("client_email", "private_key", "token_uri"):
        if not isinstance(document.get(field), str) or not document[field]:
            raise _credential_error(f'it has no "{field}"')
    if urlsplit(document["token_uri"]).scheme not in {"https", "http"}:
        raise _credential_error('its "token_uri" is not an http(s) URL')
    try:
        key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _credential_error('its "private_key" is not a PEM private key') from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _credential_error('its "private_key" is not an RSA key')
    key_id = document.get("private_key_id")
    project = document.get("project_id")
    return ServiceAccount(
        client_email=document["client_email"],
        private_key=key,
        private_key_id=key_id if isinstance(key_id, str) else "",
        token_uri=document["token_uri"],
        project_id=project if isinstance(project, str) else "",
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_assertion(account: ServiceAccount, now: int) -> str:
    """The RS256 JWT a service account trades for an access token."""
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    claims = {
        "iss": account.client_email,
        "sub": account.client_email,
        "aud": account.token_uri,
        "scope": VERTEX_SCOPE,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    }
    signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
    signature = account.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


async def exchange_token(account: ServiceAccount, fetch: Fetcher, now: float) -> tuple[str, float]:
    """(access token, when it expires) from the account's token URI."""
    assertion = signed_assertion(account, int(now))
    payload = urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": assertion})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        status, raw = await fetch(account.token_uri, headers, payload.encode())
    except TimeoutError:
        raise GatewayError(504, "upstream_timeout", "The Vertex AI token endpoint did not answer in time.") from None
    except OSError as error:
        raise GatewayError(
            502, "upstream_error", f"Could not reach the Vertex AI token endpoint ({type(error).__name__})."
        ) from None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        document = None
    if status != 200:
        detail = error_message(document)[:200]
        # Google echoes neither key nor assertion, but its words are passed on only if they plainly hold neither.
        if "PRIVATE KEY" in detail or assertion.rsplit(".", 1)[-1][:32] in detail:
            detail = ""
        suffix = f": {detail}" if detail else ""
        raise GatewayError(502, "upstream_error", f"The Vertex AI token exchange was refused ({status}){suffix}.")
    token = document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token:
        raise GatewayError(502, "upstream_error", "The Vertex AI token endpoint answered without an access token.")
    expires_in = document.get("expires_in") if isinstance(document, dict) else None
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else ASSERTION_LIFETIME
    return token, now + lifetime


# Adapters ---------------------------------------------------------------------------------


def _quoted(path: str) -> str:
    return quote(path, safe="/@")


class _GoogleAdapter:
    name = ""
    label = ""  # how refusals name the provider
    stream_kind = "sse"

    def chat_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        return chat_completion(document, alias)

    def stream_translator(self, alias: str, include_usage: bool) -> GoogleStreamTranslator:
        return GoogleStreamTranslator(alias, include_usage)

    def error_message(self, document: Any) -> str:
        return error_message(document)


class GeminiAdapter(_GoogleAdapter):
    """The Gemini API (generativelanguage.googleapis.com) with an API key."""

    name = "gemini"
    label = "Gemini"

    def _url(self, target: Target, method: str) -> str:
        base = (target.credential.base_url or GEMINI_BASE).rstrip("/").removesuffix("/v1beta")
        model = target.deployment.upstream_model
        if not model.startswith(("models/", "tunedModels/")):
            model = f"models/{model}"
        return f"{base}/v1beta/{_quoted(model)}:{method}"

    def _headers(self, target: Target) -> dict[str, str]:
        return {"x-goog-api-key": target.secret.strip()}

    async def chat_request(self, target: Target, body: dict[str, Any], stream: bool, fetch: Fetcher) -> Outbound:
        payload = chat_payload(body, target.deployment.max_output_tokens, self.label)
        method = "streamGenerateContent" if stream else "generateContent"
        return Outbound(
            self._url(target, method),
            self._headers(target),
            orjson.dumps(payload),
            {"alt": "sse"} if stream else None,
        )

    async def embeddings_request(self, target: Target, body: dict[str, Any], fetch: Fetcher) -> Outbound:
        texts, dimensions = _embedding_texts(body, self.label)
        model = target.deployment.upstream_model
        model = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        requests = []
        for text in texts:
            request: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if dimensions is not None:
                request["outputDimensionality"] = dimensions
            requests.append(request)
        return Outbound(
            self._url(target, "batchEmbedContents"), self._headers(target), orjson.dumps({"requests": requests})
        )

    def embeddings_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        """The Gemini API reports no tokens for embeddings: usage is left for the caller to
        estimate from the input (reported False)."""
        embeddings = document.get("embeddings")
        if not isinstance(embeddings, list):
            raise GatewayError(502, "upstream_error", "The provider's answer held no embeddings.")
        vectors = [item.get("values") if isinstance(item, dict) else None for item in embeddings]
        return _embedding_list(vectors, alias, 0), Usage()


class VertexAdapter(_GoogleAdapter):
    """Vertex AI's Gemini models with a service-account key: an OAuth token per credential."""

    name = "vertex_ai"
    label = "Vertex AI"

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._accounts: dict[str, ServiceAccount] = {}  # secret digest -> parsed key
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (credential, digest) -> token, expiry
        # The exchange under way per key, which every caller that needs the token awaits.
        self._exchanges: dict[tuple[str, str], asyncio.Task[str]] = {}

    def _account(self, secret: str) -> tuple[str, ServiceAccount]:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        account = self._accounts.get(digest)
        if account is None:
            account = parse_service_account(secret)
            if len(self._accounts) >= CACHE_LIMIT:
                self._accounts.pop(next(iter(self._accounts)))
            self._accounts[digest] = account
        return digest, account

    async def access_token(self, target: Target, fetch: Fetcher) -> str:
        digest, account = self._account(target.secret)
        key = (target.credential.id, digest)
        cached = self._tokens.get(key)
        if cached is not None and self.clock() < cached[1] - TOKEN_REFRESH_MARGIN:
            return cached[0]
        loop = asyncio.get_running_loop()
        exchange = self._exchanges.get(key)
        if exchange is None or exchange.get_loop() is not loop:
            exchange = loop.create_task(self._renew(key, account, fetch))
            self._exchanges[key] = exchange
        # Shielded: a caller that goes away does not cancel the exchange the others wait for.
        return await asyncio.shield(exchange)

    async def _renew(self, key: tuple[str, str], account: ServiceAccount, fetch: Fetcher) -> str:
        try:
            token, expires_at = await exchange_token(account, fetch, self.clock())
            if len(self._tokens) >= CACHE_LIMIT:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[key] = (token, expires_at)
            return token
        finally:
            if self._exchanges.get(key) is asyncio.current_task():
                del self._exchanges[key]

    def _url(self, target: Target, account: ServiceAccount, method: str) -> str:
        credential = target.credential
        region = credential.region or VERTEX_DEFAULT_REGION
        project = credential.project or account.project_id
        if not REGION.fullmatch(region):
            raise GatewayError(502, "upstream_error", "The Vertex AI credential's region is not a Google location.")
        if not PROJECT.fullmatch(project):
            raise GatewayError(502, "upstream_error", "The Vertex AI credential names no valid project.")
        if credential.base_url:
            base = credential.base_url.rstrip("/")
        elif region == "global":
            base = "https://aiplatform.googleapis.com"
        else:
            base = f"https://{region}-aiplatform.googleapis.com"
        model = target.deployment.upstream_model
        if not model.startswith("projects/"):
            publisher = model if model.startswith("publishers/") else f"publishers/google/models/{model}"
            model = f"projects/{project}/locations/{region}/{publisher}"
        return f"{base}/v1/{_quoted(model)}:{method}"

    async def _headers(self, target: Target, fetch: Fetcher) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.access_token(target, fetch)}"}

    async def chat_request(self, target: Target, body: dict[str, Any], stream: bool, fetch: Fetcher) -> Outbound:
        payload = chat_payload(body, target.deployment.max_output_tokens, self.label)
        _, account = self._account(target.secret)
        method = "streamGenerateContent" if stream else "generateContent"
        url = self._url(target, account, method)
        return Outbound(
            url, await self._headers(target, fetch), orjson.dumps(payload), {"alt": "sse"} if stream else None
        )

    async def embeddings_request(self, target: Target, body: dict[str, Any], fetch: Fetcher) -> Outbound:
        texts, dimensions = _embedding_texts(body, self.label)
        payload: dict[str, Any] = {"instances": [{"content": text} for text in texts]}
        if dimensions is not None:
            payload["parameters"] = {"outputDimensionality": dimensions}
        _, account = self._account(target.secret)
        url = self._url(target, account, "predict")
        return Outbound(url, await self._headers(target, fetch), orjson.dumps(payload))

    def embeddings_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        predictions = document.get("predictions")
        if not isinstance(predictions, list):
            raise GatewayError(502, "upstream_error", "The provider's answer held no predictions.")
        vectors: list[Any] = []
        tokens = 0
        for prediction in predictions:
            embeddings = prediction.get("embeddings") if isinstance(prediction, dict) else None
            embeddings = embeddings if isinstance(embeddings, dict) else {}
            vectors.append(embeddings.get("values"))
            statistics = embeddings.get("statistics")
            tokens += token_count(statistics.get("token_count")) if isinstance(statistics, dict) else 0
        return _embedding_list(vectors, alias, tokens), Usage(tokens, 0, True)


def _embedding_list(vectors: list[Any], alias: str, tokens: int) -> dict[str, Any]:
    if not all(isinstance(vector, list) for vector in vectors):
        raise GatewayError(502, "upstream_error", "The provider's answer held an embedding without values.")
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": vector} for index, vector in enumerate(vectors)],
        "model": alias,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }

"""What every upstream kind provides, so that gateway/upstream.py calls each the same way.

The gateway speaks OpenAI chat completions inside: every inbound API (chat completions,
Anthropic Messages, the Responses API) becomes a chat-completions body, and every provider
answer becomes a chat completion or a stream of chat.completion.chunk objects. A provider
adapter translates one request and one answer at a time; it holds no connection and no state
beyond a stream's translator (and, for Vertex AI and AWS roles, a cache of short-lived tokens).

A parameter the provider cannot honour is either translated or refused with
`unsupported(name, provider)`: never dropped without a word.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .config import CredentialConfig, DeploymentConfig
from .errors import GatewayError, invalid_request


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reported: bool = False  # True when the provider said so; False when we counted


@dataclass(frozen=True)
class Target:
    """Where one call goes: the credential (with its secret opened) and the deployment."""

    credential: CredentialConfig
    deployment: DeploymentConfig
    secret: str  # API key, service-account JSON or AWS secret access key


@dataclass(frozen=True)
class Outbound:
    """One request, ready to send: the adapter has signed it if the provider wants that."""

    url: str
    headers: dict[str, str]
    payload: bytes
    params: dict[str, str] | None = None


class StreamTranslator(Protocol):
    usage: Usage

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat.completion.chunk objects one provider event makes (often none or one)."""
        ...

    def finish(self) -> list[dict[str, Any]]:
        """Chunks to send after the provider's last event (the usage chunk, if asked for)."""
        ...


class Fetcher(Protocol):
    """A POST for adapters that need a token first (Vertex AI's OAuth token, AWS STS)."""

    async def __call__(self, url: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]: ...


class ProviderAdapter(Protocol):
    name: str
    stream_kind: str  # "sse" (data: lines of JSON) or "aws-eventstream" (binary frames)

    async def chat_request(self, target: Target, body: dict[str, Any], stream: bool, fetch: Fetcher) -> Outbound: ...

    def chat_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]: ...

    def stream_translator(self, alias: str, include_usage: bool) -> StreamTranslator: ...

    async def embeddings_request(self, target: Target, body: dict[str, Any], fetch: Fetcher) -> Outbound: ...

    def embeddings_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]: ...

    def error_message(self, document: Any) -> str:
        """The provider's own words from an error answer's JSON, or ""."""
        ...


def unsupported(name: str, provider: str, hint: str = "") -> GatewayError:
    """The 400 for a parameter a provider cannot honour and the gateway cannot translate."""
    extra = f" {hint}" if hint else ""
    return GatewayError(
        400,
        "unsupported_parameter",
        f"The parameter {name!r} is not supported for {provider} deployments.{extra}",
    )


def chat_chunk(
    chunk_id: str, created: int, alias: str, delta: dict[str, Any], finish: str | None = None, index: int = 0
) -> dict[str, Any]:
    """One chat.completion.chunk with one choice."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": alias,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(chunk_id: str, created: int, alias: str, usage: Usage) -> dict[str, Any]:
    """The last chunk of a stream whose client asked for usage: no choices."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": alias,
        "choices": [],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }


def split_data_url(url: str) -> tuple[str, str, bool] | None:
    """(media type, lower-cased; the data; whether it is base64) of a `data:` URL, or None when
    the URL has no comma."""
    header, comma, data = url[len("data:") :].partition(",")
    if not comma:
        return None
    media_type, *parameters = header.split(";")
    base64_encoded = "base64" in (parameter.strip().lower() for parameter in parameters)
    return media_type.strip().lower(), data, base64_encoded


def tool_input(arguments: Any, at: str, why: str = "") -> dict[str, Any]:
    """A tool call's arguments (OpenAI sends JSON text) as the object other providers take; a
    400 naming `at` for anything but a JSON object."""
    try:
        parsed = orjson.loads(arguments or "{}") if isinstance(arguments, str | None) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise invalid_request(f"'{at}' must be a JSON object{why}.")
    return parsed


def token_count(value: object) -> int:
    """A provider's token count, or 0 when it sent something else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


EventSource = AsyncIterator[dict[str, Any]]

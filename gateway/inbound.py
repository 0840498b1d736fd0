"""The APIs a client may call, each turned into the gateway's one internal request (an OpenAI
chat-completions body) and each answer turned back into the client's format:

- `/v1/chat/completions` and `/v1/embeddings`: OpenAI's, as they are;
- `/v1/messages`: Anthropic's Messages API (gateway/messages_api.py); to an Anthropic
  deployment the body goes through unchanged;
- `/v1/responses`: OpenAI's Responses API (gateway/responses_api.py); to an OpenAI deployment
  the body goes through unchanged.
"""

from typing import Any, Protocol

import orjson

from . import messages_api, responses_api
from .errors import GatewayError
from .http import Response, error_response, json_response
from .providers import unsupported
from .validation import validate_chat, validate_embeddings


class StreamRenderer(Protocol):
    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def close(self) -> bytes: ...

    def fail(self, error: GatewayError) -> bytes | None:
        """The API's own error event for a stream that breaks after it began; None where the
        API has none (the connection is then cut, as it was)."""
        ...


class ChatStream:
    """chat.completion.chunk objects as OpenAI's server-sent events."""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def close(self) -> bytes:
        return b"data: [DONE]\n\n"

    def fail(self, error: GatewayError) -> bytes | None:
        return None


class MessagesRenderer(messages_api.MessagesStream):
    def fail(self, error: GatewayError) -> bytes | None:
        return messages_api.error_event(error.status, error.message)


class ResponsesRenderer:
    def __init__(self, alias: str, native: dict[str, Any]):
        self.stream = responses_api.ResponsesStream(alias, native)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return self.stream.feed(chunk)

    def close(self) -> bytes:
        return self.stream.close()

    def fail(self, error: GatewayError) -> bytes | None:
        return self.stream.fail(error.message)  # response.failed


class Api:
    """OpenAI chat completions: the internal format itself."""

    endpoint = "chat.completions"
    native_provider: str | None = None  # the provider that gets the client's body as it is
    chat = True  # False for embeddings

    def parse(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[GatewayError]]:
        """(chat body, the 400s of what only the API's own provider honours: raised when the
        request goes to another); a 400 at once for a malformed body."""
        validate_chat(body)
        return body, []

    def answer(self, completion: dict[str, Any], alias: str, native: dict[str, Any]) -> dict[str, Any]:
        return completion

    def stream(self, alias: str, native: dict[str, Any], input_estimate: int) -> StreamRenderer:
        return ChatStream()

    def wants_usage_chunk(self, native: dict[str, Any]) -> bool:
        return bool((native.get("stream_options") or {}).get("include_usage"))

    def error(self, error: GatewayError) -> Response:
        return error.response()


class EmbeddingsApi(Api):
    endpoint = "embeddings"
    chat = False

    def parse(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[GatewayError]]:
        validate_embeddings(body)
        return body, []


class MessagesApi(Api):
    """Anthropic's Messages API; errors in Anthropic's shape."""

    endpoint = "messages"
    native_provider = "anthropic"

    def parse(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[GatewayError]]:
        chat, native_only = messages_api.to_chat(body)
        validate_chat(chat)
        return chat, [unsupported(name, "non-Anthropic") for name in native_only]

    def answer(self, completion: dict[str, Any], alias: str, native: dict[str, Any]) -> dict[str, Any]:
        return messages_api.from_chat(completion, alias)

    def stream(self, alias: str, native: dict[str, Any], input_estimate: int) -> StreamRenderer:
        return MessagesRenderer(alias, input_estimate)

    def wants_usage_chunk(self, native: dict[str, Any]) -> bool:
        return True  # message_delta carries the usage

    def error(self, error: GatewayError) -> Response:
        return json_response(
            error.status, messages_api.error_document(error.status, error.message), dict(error.headers)
        )


class ResponsesApi(Api):
    """OpenAI's Responses API."""

    endpoint = "responses"
    native_provider = "openai"

    def parse(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[GatewayError]]:
        chat, refusals = responses_api.translate(body)
        if chat.get("messages") or not refusals:  # a stored prompt may stand in for the input, at OpenAI
            validate_chat(chat)
        return chat, refusals

    def answer(self, completion: dict[str, Any], alias: str, native: dict[str, Any]) -> dict[str, Any]:
        return responses_api.from_chat(completion, alias, native)

    def stream(self, alias: str, native: dict[str, Any], input_estimate: int) -> StreamRenderer:
        return ResponsesRenderer(alias, native)

    def wants_usage_chunk(self, native: dict[str, Any]) -> bool:
        return True  # response.completed carries the usage


CHAT, EMBEDDINGS, MESSAGES, RESPONSES = Api(), EmbeddingsApi(), MessagesApi(), ResponsesApi()


def error_for(api: Api, status: int, code: str, message: str) -> Response:
    if isinstance(api, MessagesApi):
        return api.error(GatewayError(status, code, message))
    return error_response(status, code, message, {})

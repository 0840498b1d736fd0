"""Calls to providers, every kind through its adapter (gateway/providers.py): OpenAI, Azure
OpenAI and OpenAI-compatible base URLs (gateway/openai_compat.py), Anthropic
(gateway/anthropic.py), the Gemini API and Vertex AI (gateway/gemini.py), AWS Bedrock
(gateway/bedrock.py).

The upstream URL comes only from the signed config, never from the client, and only the
headers a provider needs are sent: the client's own headers are not forwarded.

Two ways through:
- translated: the request as a chat-completions body; the answer as a chat completion or a
  stream of chunk objects, whatever the provider speaks;
- native: an Anthropic Messages request to an Anthropic deployment, a Responses request to an
  OpenAI deployment, passed through as sent (the model renamed), usage read off the answer.
"""

import array
import asyncio
import base64
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import messages_api, responses_api
from .anthropic import ANTHROPIC_BASE, ANTHROPIC_VERSION, AnthropicAdapter, stream_failure
from .bedrock import BedrockAdapter
from .bedrock import EventStreamDecoder as EventDecoder
from .errors import GatewayError
from .gemini import GeminiAdapter, VertexAdapter
from .http_client import HttpClient, Response
from .openai_compat import OpenAIAdapter, openai_target
from .providers import Outbound, ProviderAdapter, StreamTranslator, Target, Usage, unsupported

ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": OpenAIAdapter("openai"),
    "azure_openai": OpenAIAdapter("azure_openai"),
    "openai_compatible": OpenAIAdapter("openai_compatible"),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "vertex_ai": VertexAdapter(),
    "bedrock": BedrockAdapter(),
}
# Providers with no `n`: n > 1 becomes n calls of one choice each, answered as one completion.
FANS_OUT_N = frozenset({"anthropic", "bedrock"})
PROVIDER_NAMES = {
    "openai": "OpenAI",
    "azure_openai": "Azure OpenAI",
    "openai_compatible": "OpenAI-compatible",
    "anthropic": "Anthropic",
    "gemini": "Gemini API",
    "vertex_ai": "Vertex AI",
    "bedrock": "AWS Bedrock",
}
TOKEN_FETCH_SECONDS = 10.0
MAX_TOKEN_ANSWER_BYTES = 64 * 1024

__all__ = ["ANTHROPIC_BASE", "CallLimits", "UpstreamClient", "UpstreamFailure", "Usage", "adapter_for"]


def adapter_for(provider: str) -> ProviderAdapter:
    return ADAPTERS[provider]


def choices_billed(provider: str, n: int) -> int:
    """How many times the input is billed for n choices: once, or n times when fanned out."""
    return n if provider in FANS_OUT_N else 1


def not_an_answer() -> "UpstreamFailure":
    return UpstreamFailure(GatewayError(502, "upstream_error", "The provider's answer was not a JSON object."))


class UpstreamFailure(Exception):
    """The deployment did not answer usefully; another deployment may be tried. `kind` is the
    retry condition it falls under (timeout, 429 or 5xx)."""

    def __init__(self, error: GatewayError, kind: str = "5xx", retry_after: float | None = None):
        super().__init__(error.message)
        self.error, self.kind, self.retry_after = error, kind, retry_after


@dataclass(frozen=True)
class CallLimits:
    """Timeouts of one upstream attempt, in seconds (from the SLA policy)."""

    connect: float = 5.0
    first_byte: float = 30.0
    total: float = 120.0


DEFAULT_LIMITS = CallLimits()


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: treated as no hint


def _error_from(adapter: ProviderAdapter, status: int, body: bytes, retry_after: str | None) -> GatewayError:
    try:
        message = adapter.error_message(orjson.loads(body))
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        message = ""
    if not isinstance(message, str):
        message = ""
    detail = f": {message[:300]}" if message else ""
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return GatewayError(429, "upstream_rate_limited", f"The provider is rate limiting{detail}", headers)
    if status in {400, 404, 413, 422}:
        return GatewayError(400, "invalid_request", f"The provider refused the request{detail}")
    return GatewayError(502, "upstream_error", f"The provider answered {status}{detail}")


def _retryable(status: int) -> bool:
    return status >= 500 or status in {401, 403, 408, 429}


def _timed_out() -> "UpstreamFailure":
    return UpstreamFailure(GatewayError(504, "upstream_timeout", "The provider did not answer in time."), "timeout")


@dataclass
class UpstreamStream:
    """An open stream from a provider, its first events already read (so that a provider that
    fails before the first one can still fall back to another deployment)."""

    response: Response
    adapter: ProviderAdapter
    decoder: "EventDecoder | None"  # binary streams (AWS event streams): bytes -> events
    pending: list[dict[str, Any]] = field(default_factory=list)  # read, not yet relayed
    raw_lines: list[bytes] = field(default_factory=list)  # native streams: lines as they came
    ended: bool = False
    first_event_after: float = 0.0

    def release(self) -> None:
        self.response.release()

    def close(self) -> None:
        self.response.close()

    async def more(self) -> bool:
        """Read until at least one more event is pending; False at the end of the stream."""
        while not self.pending and not self.ended:
            if self.decoder is not None:
                data = await self.response.read_chunk()
                if not data:
                    self.ended = True
                    self.decoder.finish()  # raises for a cut-off frame or a held-back error
                    break
                self.pending.extend(self.decoder.feed(data))
                continue
            line = await self.response.readline()
            if not line:
                self.ended = True
                break
            self.raw_lines.append(line)
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.ended = True
                break
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self.pending.append(event)
        return bool(self.pending)

    def take(self) -> list[dict[str, Any]]:
        events, self.pending = self.pending, []
        return events


class UpstreamClient:
    """One pool of keep-alive connections per worker process (gateway/http_client.py)."""

    def __init__(self, timeout_seconds: float):
        self.timeout_seconds = timeout_seconds
        self.http = HttpClient()

    async def close(self) -> None:
        await self.http.close()

    async def fetch(self, url: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
        """A token exchange for an adapter (Vertex AI's OAuth token, AWS STS): (status, body)."""
        try:
            response = await self.http.request(
                "POST",
                url,
                headers=headers,
                body=payload,
                connect_timeout=TOKEN_FETCH_SECONDS,
                answer_timeout=TOKEN_FETCH_SECONDS,
                total_timeout=TOKEN_FETCH_SECONDS,
            )
            body = await response.read()
        except TimeoutError:
            raise _timed_out() from None
        except OSError as error:
            raise UpstreamFailure(
                GatewayError(502, "upstream_error", f"Could not reach the token service ({type(error).__name__}).")
            ) from None
        return response.status, body[:MAX_TOKEN_ANSWER_BYTES]

    async def _send(self, adapter: ProviderAdapter, outbound: Outbound, limits: CallLimits) -> Response:
        # The HTTP client writes Host itself: a second one (a signer's) is refused by AWS.
        headers = {name: value for name, value in outbound.headers.items() if name.lower() != "host"}
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        try:
            # The answer must start within the first-token timeout, and end within the total.
            response = await self.http.request(
                "POST",
                outbound.url,
                headers=headers,
                body=outbound.payload,
                params=outbound.params or None,
                connect_timeout=min(limits.connect, limits.total),
                answer_timeout=min(limits.first_byte, limits.total),
                total_timeout=limits.total,
            )
        except TimeoutError:
            raise _timed_out() from None
        except OSError as error:
            raise UpstreamFailure(
                GatewayError(502, "upstream_error", f"Could not reach the provider ({type(error).__name__}).")
            ) from None
        if response.status >= 300:
            try:
                body = await response.read()
            except (TimeoutError, OSError):
                body = b""
            retry_after = response.headers.get("retry-after")
            refusal = _error_from(adapter, response.status, body, retry_after)
            if response.status == 429:
                raise UpstreamFailure(refusal, "429", parse_retry_after(retry_after))
            if _retryable(response.status) or 300 <= response.status < 400:
                raise UpstreamFailure(refusal)
            raise refusal
        return response

    async def _json(self, response: Response) -> dict[str, Any]:
        """The answer as a JSON object; an UpstreamFailure (502) for anything else."""
        try:
            document = orjson.loads(await response.read())
        except TimeoutError:
            raise _timed_out() from None
        except (orjson.JSONDecodeError, OSError):
            raise not_an_answer() from None
        finally:
            response.release()
        if not isinstance(document, dict):
            raise not_an_answer()
        return document

    # Chat completions, translated ----------------------------------------------------------

    async def chat(
        self,
        target: Target,
        body: dict[str, Any],
        alias: str,
        limits: CallLimits = DEFAULT_LIMITS,
        raw: bytes | None = None,
    ) -> tuple[dict[str, Any], Usage]:
        """`raw` is the client's body as it came: forwarded unchanged when the provider
        speaks OpenAI's format and the model keeps its name, else re-serialised."""
        n = body.get("n") or 1
        if n > 1 and target.credential.provider in FANS_OUT_N:
            return await self._fan_out(target, body, alias, limits, n)
        adapter = ADAPTERS[target.credential.provider]
        if isinstance(adapter, OpenAIAdapter):
            outbound = adapter.chat_payload(target, body, False, raw)
        else:
            outbound = await adapter.chat_request(target, body, False, self.fetch)
        document = await self._json(await self._send(adapter, outbound, limits))
        try:
            return adapter.chat_answer(document, alias)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            raise not_an_answer() from None

    async def _fan_out(
        self,
        target: Target,
        body: dict[str, Any],
        alias: str,
        limits: CallLimits,
        n: int,
    ) -> tuple[dict[str, Any], Usage]:
        """n choices from a provider that gives one: n calls at once, one completion back, the
        usage of all n added up (each call is billed its input, as the provider bills it)."""
        single = {name: value for name, value in body.items() if name != "n"}
        calls = [self.chat(target, single, alias, limits) for _ in range(n)]
        answers = await asyncio.gather(*calls)
        first, usage = answers[0][0], Usage(reported=True)
        choices = []
        for index, (completion, part) in enumerate(answers):
            choice = dict(completion["choices"][0])
            choice["index"] = index
            choices.append(choice)
            usage.input_tokens += part.input_tokens
            usage.output_tokens += part.output_tokens
            usage.reported = usage.reported and part.reported
        first["choices"] = choices
        first["usage"] = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }
        return first, usage

    async def open_chat_stream(
        self,
        target: Target,
        body: dict[str, Any],
        limits: CallLimits = DEFAULT_LIMITS,
    ) -> UpstreamStream:
        """Send the request and wait for the first event: until then a failure or a silent
        provider can still fall back to another deployment; after it, nothing is repeated."""
        provider = target.credential.provider
        if (body.get("n") or 1) > 1 and provider in FANS_OUT_N:
            raise unsupported("n", PROVIDER_NAMES[provider], "More than one choice cannot be streamed.")
        adapter = ADAPTERS[provider]
        outbound = await adapter.chat_request(target, body, True, self.fetch)
        return await self._open(adapter, outbound, limits)

    async def _open(self, adapter: ProviderAdapter, outbound: Outbound, limits: CallLimits) -> UpstreamStream:
        response = await self._send(adapter, outbound, limits)
        decoder = adapter.event_decoder() if isinstance(adapter, BedrockAdapter) else None
        stream = UpstreamStream(response, adapter, decoder)
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(stream.more(), limits.first_byte)
        except TimeoutError:
            response.close()
            raise UpstreamFailure(
                GatewayError(504, "upstream_timeout", "The provider sent no first token in time."), "timeout"
            ) from None
        except OSError:
            response.close()
            raise UpstreamFailure(GatewayError(502, "upstream_error", "The provider's stream broke.")) from None
        except GatewayError as error:  # an error event as the stream's first
            response.close()
            raise UpstreamFailure(error, "429" if error.status == 429 else "5xx") from None
        first = stream.pending[0] if stream.pending else None
        if isinstance(adapter, AnthropicAdapter) and first is not None and first.get("type") == "error":
            response.close()  # overloaded before the first token: another deployment may answer
            failed = stream_failure(first.get("error"))
            raise UpstreamFailure(failed, "429" if failed.status == 429 else "5xx")
        stream.first_event_after = asyncio.get_running_loop().time() - started
        return stream

    async def relay_stream(
        self, stream: UpstreamStream, alias: str, include_usage: bool, usage: Usage
    ) -> AsyncIterator[dict[str, Any]]:
        """chat.completion.chunk objects for the client, as they arrive; fills `usage`."""
        translator: StreamTranslator = stream.adapter.stream_translator(alias, include_usage)
        try:
            while await stream.more():
                for event in stream.take():
                    for chunk in translator.feed(event):
                        _copy_usage(translator.usage, usage)
                        yield chunk
                    _copy_usage(translator.usage, usage)
            for chunk in translator.finish():
                yield chunk
            _copy_usage(translator.usage, usage)
        finally:
            stream.release()

    # Native pass-through ------------------------------------------------------------------

    def _native_outbound(
        self,
        target: Target,
        api: str,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> Outbound:
        payload = orjson.dumps({**body, "model": target.deployment.upstream_model})
        if api in ("messages", "count_tokens"):
            base = (target.credential.base_url or ANTHROPIC_BASE).rstrip("/")
            path = "/v1/messages/count_tokens" if api == "count_tokens" else "/v1/messages"
            sent = {
                "x-api-key": target.secret,
                "anthropic-version": headers.get("anthropic-version") or ANTHROPIC_VERSION,
            }
            if headers.get("anthropic-beta"):
                sent["anthropic-beta"] = headers["anthropic-beta"]
            return Outbound(base + path, sent, payload)
        url, sent, params = openai_target(target.credential, target.deployment, target.secret, "responses")
        return Outbound(url, sent, payload, params)

    async def native(
        self,
        target: Target,
        api: str,
        body: dict[str, Any],
        alias: str,
        headers: dict[str, str],
        limits: CallLimits = DEFAULT_LIMITS,
    ) -> tuple[dict[str, Any], Usage]:
        """A Messages request to Anthropic, or a Responses request to OpenAI, as sent."""
        adapter = ADAPTERS[target.credential.provider]
        outbound = self._native_outbound(target, api, body, headers)
        document = await self._json(await self._send(adapter, outbound, limits))
        if api == "count_tokens":
            return document, Usage()
        document["model"] = alias
        usage = messages_api.native_usage(document) if api == "messages" else responses_api.native_usage(document)
        return document, usage

    async def open_native_stream(
        self,
        target: Target,
        api: str,
        body: dict[str, Any],
        headers: dict[str, str],
        limits: CallLimits = DEFAULT_LIMITS,
    ) -> UpstreamStream:
        adapter = ADAPTERS[target.credential.provider]
        outbound = self._native_outbound(target, api, body, headers)
        return await self._open(adapter, outbound, limits)

    async def relay_native(self, stream: UpstreamStream, api: str, alias: str, usage: Usage) -> AsyncIterator[bytes]:
        """The provider's own server-sent events, line by line as they came (the model renamed
        where an event names it); `usage` filled from the events as they pass."""
        meter: messages_api.NativeMeter | responses_api.NativeMeter = (
            messages_api.NativeMeter() if api == "messages" else responses_api.NativeMeter()
        )
        try:
            while True:
                more = await stream.more()
                lines, stream.raw_lines = stream.raw_lines, []
                for event in stream.take():
                    meter.feed(event)
                    _copy_usage(meter.usage, usage)
                for line in lines:
                    yield _renamed(line, alias)
                if not more:
                    break
        finally:
            stream.release()

    # Embeddings --------------------------------------------------------------------------

    async def embeddings(
        self,
        target: Target,
        body: dict[str, Any],
        alias: str,
        limits: CallLimits = DEFAULT_LIMITS,
    ) -> tuple[dict[str, Any], Usage]:
        adapter = ADAPTERS[target.credential.provider]
        outbound = await adapter.embeddings_request(target, body, self.fetch)
        document = await self._json(await self._send(adapter, outbound, limits))
        try:
            result, usage = adapter.embeddings_answer(document, alias)
            if body.get("encoding_format") == "base64" and not isinstance(adapter, OpenAIAdapter):
                for item in result["data"]:
                    item["embedding"] = base64_floats(item["embedding"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError):
            raise not_an_answer() from None
        return result, usage


def base64_floats(vector: list[float]) -> str:
    """An embedding as OpenAI sends it when asked for base64: little-endian float32."""
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _copy_usage(source: Usage, target: Usage) -> None:
    target.input_tokens, target.output_tokens, target.reported = (
        source.input_tokens,
        source.output_tokens,
        source.reported,
    )


MODEL_EVENTS = (b"message_start", b'"response.')


def _renamed(line: bytes, alias: str) -> bytes:
    """A native stream line with the upstream model's name replaced by the alias, in the events
    that carry it (message_start; the Responses API's response.* lifecycle events)."""
    if not line.startswith(b"data:") or not any(marker in line for marker in MODEL_EVENTS):
        return line
    try:
        event = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return line
    holder = event.get("message") if isinstance(event, dict) else None
    if not isinstance(holder, dict):
        holder = event.get("response") if isinstance(event, dict) else None
    if not isinstance(holder, dict) or "model" not in holder:
        return line
    holder["model"] = alias
    return b"data: " + orjson.dumps(event) + b"\n"

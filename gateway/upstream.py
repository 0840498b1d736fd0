"""Calls to providers: OpenAI-compatible (OpenAI, Azure OpenAI, any base URL) and Anthropic.

The upstream URL comes only from the signed config, never from the client, and only the
headers a provider needs are sent: the client's own headers are not forwarded.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from .anthropic import AnthropicStreamTranslator, request_to_anthropic, response_from_anthropic
from .config import CredentialConfig, DeploymentConfig
from .errors import GatewayError
from .http_client import HttpClient, Response

OPENAI_BASE = "https://api.openai.com/v1"
ANTHROPIC_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


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


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reported: bool = False  # True when the provider said so; False when we counted


def _openai_target(credential: CredentialConfig, deployment: DeploymentConfig, api_key: str, operation: str):
    if credential.provider == "azure_openai":
        base = credential.azure_endpoint.rstrip("/")
        url = f"{base}/openai/deployments/{deployment.upstream_model}/{operation}"
        return url, {"api-key": api_key}, {"api-version": credential.azure_api_version}
    base = (credential.base_url or OPENAI_BASE).rstrip("/")
    return f"{base}/{operation}", {"Authorization": f"Bearer {api_key}"}, {}


def _error_from(response_status: int, body: bytes, retry_after: str | None) -> GatewayError:
    try:
        message = orjson.loads(body).get("error", {}).get("message") or ""
    except (orjson.JSONDecodeError, AttributeError):
        message = ""
    if not isinstance(message, str):
        message = ""
    detail = f": {message[:300]}" if message else ""
    if response_status == 429:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return GatewayError(429, "upstream_rate_limited", f"The provider is rate limiting{detail}", headers)
    if response_status in {400, 404, 422}:
        return GatewayError(400, "invalid_request", f"The provider refused the request{detail}")
    return GatewayError(502, "upstream_error", f"The provider answered {response_status}{detail}")


def _token_count(value: object) -> int:
    """A provider's token count, or 0 when it sent something else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _reported_usage(document: dict[str, Any], output: bool = True) -> "Usage":
    usage = document.get("usage")
    if not isinstance(usage, dict) or not usage:
        return Usage()
    return Usage(
        _token_count(usage.get("prompt_tokens")), _token_count(usage.get("completion_tokens")) if output else 0, True
    )


def _retryable(status: int) -> bool:
    return status >= 500 or status in {401, 403, 408, 429}


def _timed_out() -> "UpstreamFailure":
    return UpstreamFailure(GatewayError(504, "upstream_timeout", "The provider did not answer in time."), "timeout")


class UpstreamClient:
    """One pool of keep-alive connections per worker process (gateway/http_client.py)."""

    def __init__(self, timeout_seconds: float):
        self.timeout_seconds = timeout_seconds
        self.http = HttpClient()

    async def close(self) -> None:
        await self.http.close()

    async def _send(self, url: str, headers: dict, params: dict, payload: bytes, limits: CallLimits) -> Response:
        try:
            # The answer must start within the first-token timeout, and end within the total.
            response = await self.http.request(
                "POST",
                url,
                headers={**headers, "Content-Type": "application/json"},
                body=payload,
                params=params or None,
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
            error = _error_from(response.status, body, retry_after)
            if response.status == 429:
                raise UpstreamFailure(error, "429", parse_retry_after(retry_after))
            if _retryable(response.status) or 300 <= response.status < 400:
                raise UpstreamFailure(error)
            raise error
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

    # Chat completions --------------------------------------------------------------------

    async def chat(
        self,
        credential,
        deployment,
        api_key: str,
        body: dict,
        alias: str,
        limits: CallLimits = DEFAULT_LIMITS,
        raw: bytes | None = None,
    ) -> tuple[dict, Usage]:
        """`raw` is the client's body as it came: forwarded unchanged when the provider
        speaks OpenAI's format and the model keeps its name, else re-serialised."""
        if credential.provider == "anthropic":
            base = (credential.base_url or ANTHROPIC_BASE).rstrip("/")
            headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
            payload = request_to_anthropic(body, deployment.upstream_model)
            response = await self._send(f"{base}/v1/messages", headers, {}, orjson.dumps(payload), limits)
            answer = await self._json(response)
            try:
                completion, input_tokens, output_tokens = response_from_anthropic(answer, alias)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise not_an_answer() from None
            return completion, Usage(_token_count(input_tokens), _token_count(output_tokens), True)
        url, headers, params = _openai_target(credential, deployment, api_key, "chat/completions")
        if raw is None or deployment.upstream_model != alias:
            raw = orjson.dumps({**body, "model": deployment.upstream_model})
        response = await self._send(url, headers, params, raw, limits)
        completion = await self._json(response)
        completion["model"] = alias
        return completion, _reported_usage(completion)

    async def open_chat_stream(
        self, credential, deployment, api_key: str, body: dict, limits: CallLimits = DEFAULT_LIMITS
    ):
        """Send the request and wait for the first event: until then a failure or a silent
        provider can still fall back to another deployment; after it, nothing is repeated."""
        response = await self._open_stream(credential, deployment, api_key, body, limits)
        started = asyncio.get_running_loop().time()
        try:
            response.prefetched = await asyncio.wait_for(_first_event(response), limits.first_byte)
        except TimeoutError:
            response.close()
            raise UpstreamFailure(
                GatewayError(504, "upstream_timeout", "The provider sent no first token in time."), "timeout"
            ) from None
        except OSError:
            response.close()
            raise UpstreamFailure(GatewayError(502, "upstream_error", "The provider's stream broke.")) from None
        response.first_event_after = asyncio.get_running_loop().time() - started
        return response

    async def _open_stream(self, credential, deployment, api_key: str, body: dict, limits: CallLimits):
        if credential.provider == "anthropic":
            base = (credential.base_url or ANTHROPIC_BASE).rstrip("/")
            headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
            payload = request_to_anthropic({**body, "stream": True}, deployment.upstream_model)
            return await self._send(f"{base}/v1/messages", headers, {}, orjson.dumps(payload), limits)
        url, headers, params = _openai_target(credential, deployment, api_key, "chat/completions")
        # Ask for usage so tokens are counted by the provider, not estimated.
        payload = {**body, "model": deployment.upstream_model, "stream_options": {"include_usage": True}}
        return await self._send(url, headers, params, orjson.dumps(payload), limits)

    async def relay_stream(
        self, credential, response, alias: str, include_usage: bool, usage: Usage
    ) -> AsyncIterator[bytes]:
        """Server-sent events for the client, as they arrive; fills `usage` as it goes."""
        translator = AnthropicStreamTranslator(alias, include_usage) if credential.provider == "anthropic" else None
        try:
            async for raw_line in _lines(response):
                if not raw_line.startswith(b"data:"):
                    continue
                data = raw_line[5:].strip()
                if data == b"[DONE]":
                    break
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if translator is not None:
                    for chunk in translator.feed(event):
                        if chunk.get("choices"):
                            usage.output_tokens += 1 if chunk["choices"][0]["delta"].get("content") else 0
                        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    if translator.input_tokens:
                        usage.input_tokens = translator.input_tokens
                    if event.get("type") == "message_delta":
                        usage.output_tokens, usage.reported = translator.output_tokens, True
                    continue
                if event.get("usage"):
                    reported = event["usage"]
                    usage.input_tokens = int(reported.get("prompt_tokens", 0))
                    usage.output_tokens = int(reported.get("completion_tokens", 0))
                    usage.reported = True
                    if not include_usage and not event.get("choices"):
                        continue  # the client did not ask for the usage chunk
                elif event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                    usage.output_tokens += 1  # counted until the provider reports
                event["model"] = alias
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            response.release()

    # Embeddings --------------------------------------------------------------------------

    async def embeddings(
        self, credential, deployment, api_key: str, body: dict, alias: str, limits: CallLimits = DEFAULT_LIMITS
    ) -> tuple[dict, Usage]:
        if credential.provider == "anthropic":
            raise GatewayError(400, "invalid_request", f"The model {alias!r} does not offer embeddings.")
        url, headers, params = _openai_target(credential, deployment, api_key, "embeddings")
        payload = orjson.dumps({**body, "model": deployment.upstream_model})
        response = await self._send(url, headers, params, payload, limits)
        result = await self._json(response)
        result["model"] = alias
        return result, _reported_usage(result, output=False)


async def _first_event(response: Response) -> list[bytes]:
    """Lines up to and including the stream's first data line."""
    lines = []
    while True:
        line = await response.readline()
        if not line:
            return lines
        lines.append(line)
        if line.startswith(b"data:"):
            return lines


async def _lines(response: Response) -> AsyncIterator[bytes]:
    for line in response.prefetched:
        yield line
    async for line in response:
        yield line

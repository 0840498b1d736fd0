"""Upstreams that speak OpenAI's own format: OpenAI, Azure OpenAI and any OpenAI-compatible
base URL. The body goes as the client sent it (the model renamed), every parameter included:
these providers honour the whole chat-completions API, or refuse what they do not know."""

from typing import Any

import orjson

from .config import CredentialConfig, DeploymentConfig
from .providers import Fetcher, Outbound, Target, Usage, token_count

OPENAI_BASE = "https://api.openai.com/v1"


def openai_target(
    credential: CredentialConfig, deployment: DeploymentConfig, api_key: str, operation: str
) -> tuple[str, dict[str, str], dict[str, str] | None]:
    """(url, headers, query) of one operation ("chat/completions", "embeddings", "responses")."""
    if credential.provider == "azure_openai":
        base = credential.azure_endpoint.rstrip("/")
        url = f"{base}/openai/deployments/{deployment.upstream_model}/{operation}"
        return url, {"api-key": api_key}, {"api-version": credential.azure_api_version}
    base = (credential.base_url or OPENAI_BASE).rstrip("/")
    return f"{base}/{operation}", {"Authorization": f"Bearer {api_key}"}, None


def reported_usage(document: dict[str, Any], output: bool = True) -> Usage:
    usage = document.get("usage")
    if not isinstance(usage, dict) or not usage:
        return Usage()
    return Usage(
        token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens")) if output else 0, True
    )


class OpenAIStream:
    """OpenAI's own chunks, passed on with the model renamed; usage read as it goes by."""

    def __init__(self, alias: str, include_usage: bool):
        self.alias, self.include_usage = alias, include_usage
        self.usage = Usage()

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        usage = self.usage
        reported = event.get("usage")
        if isinstance(reported, dict) and reported:
            usage.input_tokens = token_count(reported.get("prompt_tokens"))
            usage.output_tokens = token_count(reported.get("completion_tokens"))
            usage.reported = True
            if not self.include_usage and not event.get("choices"):
                return []  # the client did not ask for the usage chunk
        elif not usage.reported:
            for choice in event.get("choices") or ():
                if isinstance(choice, dict) and (choice.get("delta") or {}).get("content"):
                    usage.output_tokens += 1  # counted until the provider reports
        event["model"] = self.alias
        return [event]

    def finish(self) -> list[dict[str, Any]]:
        return []


class OpenAIAdapter:
    stream_kind = "sse"

    def __init__(self, name: str):
        self.name = name

    def chat_payload(self, target: Target, body: dict[str, Any], stream: bool, raw: bytes | None) -> Outbound:
        """`raw` is the client's body as it came: sent unchanged when the model keeps its name."""
        url, headers, params = openai_target(target.credential, target.deployment, target.secret, "chat/completions")
        model = target.deployment.upstream_model
        if stream:  # ask for usage, so tokens are counted by the provider, not estimated
            payload = orjson.dumps({**body, "model": model, "stream_options": {"include_usage": True}})
        elif raw is not None and body.get("model") == model:
            payload = raw
        else:
            payload = orjson.dumps({**body, "model": model})
        return Outbound(url, headers, payload, params)

    async def chat_request(self, target: Target, body: dict[str, Any], stream: bool, fetch: Fetcher) -> Outbound:
        return self.chat_payload(target, body, stream, None)

    def chat_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        document["model"] = alias
        return document, reported_usage(document)

    def stream_translator(self, alias: str, include_usage: bool) -> OpenAIStream:
        return OpenAIStream(alias, include_usage)

    async def embeddings_request(self, target: Target, body: dict[str, Any], fetch: Fetcher) -> Outbound:
        url, headers, params = openai_target(target.credential, target.deployment, target.secret, "embeddings")
        return Outbound(url, headers, orjson.dumps({**body, "model": target.deployment.upstream_model}), params)

    def embeddings_answer(self, document: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
        document["model"] = alias
        return document, reported_usage(document, output=False)

    def error_message(self, document: Any) -> str:
        error = document.get("error") if isinstance(document, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return message if isinstance(message, str) else ""

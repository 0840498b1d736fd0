"""An ASGI app speaking the OpenAI, Azure OpenAI and Anthropic wire formats.

Behaviour per model is set with `POST /_sim/config` (JSON: {"models": {"<model or *>": {...}}})
and read back with `GET /_sim/config`; `POST /_sim/reset` restores the defaults. Knobs:
latency_ms (before the first byte), tokens_per_second (stream pace), completion_tokens,
fail_rate (0..1), fail_status, retry_after (seconds, sent with 429), hang (never answer).
`rejected_keys` lists API keys answered with 401, as a provider does for a bad key.
Every request is counted per model in `GET /_sim/stats`.
"""

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

KNOWN_MODELS = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4", "claude-haiku-4"]
EMBEDDING_DIMENSIONS = 8


@dataclass
class ModelBehaviour:
    latency_ms: float = 0
    tokens_per_second: float = 0  # 0: as fast as possible
    completion_tokens: int = 16
    fail_rate: float = 0
    fail_status: int = 500
    retry_after: float | None = None
    hang: bool = False


@dataclass
class SimulatorState:
    models: dict[str, ModelBehaviour] = field(default_factory=dict)
    rejected_keys: set[str] = field(default_factory=set)
    stats: Counter = field(default_factory=Counter)
    seed: int = 0

    def behaviour(self, model: str) -> ModelBehaviour:
        return self.models.get(model) or self.models.get("*") or ModelBehaviour()


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: about one token per four characters, at least one per word."""
    return max(len(text.split()), (len(text) + 3) // 4)


def prompt_tokens_of(messages) -> int:
    total = 0
    for message in messages or []:
        content = message.get("content") if isinstance(message, dict) else ""
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        total += 4 + count_tokens(str(content or ""))
    return total


def completion_words(n: int) -> list[str]:
    words = ["Gatehouse", "simulated", "answer", "token"]
    return [words[i % len(words)] for i in range(n)]


def error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": str(status)}}


def create_app() -> Starlette:
    state = SimulatorState()
    rng = random.Random(0)  # noqa: S311  (fault injection, not security)

    def api_key(request: Request) -> str:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.headers.get("x-api-key") or request.headers.get("api-key") or ""

    async def apply_faults(request: Request, model: str) -> Response | None:
        state.stats[model] += 1
        key = api_key(request)
        if not key or key in state.rejected_keys:
            return JSONResponse(
                error_body(401, "Incorrect API key provided.", "invalid_request_error"), status_code=401
            )
        behaviour = state.behaviour(model)
        if behaviour.hang:
            await asyncio.sleep(3600)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.fail_rate and rng.random() < behaviour.fail_rate:
            state.stats[f"{model}:failed"] += 1
            headers = {"retry-after": str(behaviour.retry_after)} if behaviour.retry_after is not None else {}
            return JSONResponse(
                error_body(behaviour.fail_status, "Simulated upstream failure.", "server_error"),
                status_code=behaviour.fail_status,
                headers=headers,
            )
        return None

    async def read_json(request: Request) -> dict | Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse(error_body(400, "Body is not JSON.", "invalid_request_error"), status_code=400)
        if not isinstance(body, dict):
            return JSONResponse(error_body(400, "Body must be an object.", "invalid_request_error"), status_code=400)
        return body

    def completion_size(body: dict, behaviour: ModelBehaviour) -> int:
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        return (
            min(behaviour.completion_tokens, limit)
            if isinstance(limit, int) and limit > 0
            else behaviour.completion_tokens
        )

    async def chat_completions(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        model = str(body.get("model") or request.path_params.get("deployment") or "")
        fault = await apply_faults(request, model)
        if fault is not None:
            return fault
        behaviour = state.behaviour(model)
        prompt_tokens = prompt_tokens_of(body.get("messages"))
        words = completion_words(completion_size(body, behaviour))
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            def chunk(delta: dict, finish: str | None = None) -> str:
                payload = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                if behaviour.tokens_per_second:
                    await asyncio.sleep(1 / behaviour.tokens_per_second)
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
            if include_usage:
                payload = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        model = str(body.get("model") or request.path_params.get("deployment") or "")
        fault = await apply_faults(request, model)
        if fault is not None:
            return fault
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        tokens = 0
        for index, item in enumerate(items):
            text = str(item)
            tokens += count_tokens(text)
            seeded = random.Random(text)  # noqa: S311  (deterministic vectors, not security)
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": [round(seeded.uniform(-1, 1), 6) for _ in range(EMBEDDING_DIMENSIONS)],
                }
            )
        return JSONResponse(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )

    async def list_models(request: Request) -> Response:
        fault = await apply_faults(request, "models")
        if fault is not None:
            return fault
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "simulator"} for name in KNOWN_MODELS
                ],
            }
        )

    async def anthropic_messages(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        model = str(body.get("model") or "")
        fault = await apply_faults(request, model)
        if fault is not None:
            return fault
        behaviour = state.behaviour(model)
        input_tokens = prompt_tokens_of(body.get("messages")) + count_tokens(str(body.get("system") or ""))
        words = completion_words(completion_size(body, behaviour))
        message_id = "msg_" + uuid.uuid4().hex[:24]
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": " ".join(words)}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": len(words)},
                }
            )

        async def events():
            def event(name: str, payload: dict) -> str:
                return f"event: {name}\ndata: {json.dumps(payload)}\n\n"

            yield event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
                    },
                },
            )
            yield event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            for i, word in enumerate(words):
                if behaviour.tokens_per_second:
                    await asyncio.sleep(1 / behaviour.tokens_per_second)
                yield event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
                    },
                )
            yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": len(words)}},
            )
            yield event("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    async def get_config(request: Request) -> Response:
        return JSONResponse(
            {
                "models": {name: asdict(b) for name, b in state.models.items()},
                "rejected_keys": sorted(state.rejected_keys),
            }
        )

    async def set_config(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        try:
            for name, knobs in (body.get("models") or {}).items():
                state.models[name] = replace(state.models.get(name, ModelBehaviour()), **knobs)
        except TypeError as error:
            return JSONResponse(error_body(400, f"Unknown knob: {error}", "invalid_request_error"), status_code=400)
        if "rejected_keys" in body:
            state.rejected_keys = set(body["rejected_keys"])
        return await get_config(request)

    async def reset(request: Request) -> Response:
        state.models.clear()
        state.rejected_keys.clear()
        state.stats.clear()
        return JSONResponse({"ok": True})

    async def stats(request: Request) -> Response:
        return JSONResponse(dict(state.stats))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/messages", anthropic_messages, methods=["POST"]),
            Route("/openai/deployments/{deployment}/chat/completions", chat_completions, methods=["POST"]),
            Route("/openai/deployments/{deployment}/embeddings", embeddings, methods=["POST"]),
            Route("/openai/models", list_models, methods=["GET"]),
            Route("/_sim/config", get_config, methods=["GET"]),
            Route("/_sim/config", set_config, methods=["POST"]),
            Route("/_sim/reset", reset, methods=["POST"]),
            Route("/_sim/stats", stats, methods=["GET"]),
        ]
    )


app = create_app()

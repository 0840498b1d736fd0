"""What the simulator answers, the same in every wire format (OpenAI, Azure, Anthropic,
Gemini, Bedrock), so each translation in the gateway is tested against one known behaviour:

- Text: `completion_words(k)` joined by spaces, k = min(completion_tokens knob, max tokens asked).
- Tools offered, tool choice not "none", and the last message is not a tool result: one call
  to the forced tool, else the first tool, with `example_from_schema(its parameters)` as
  arguments. After a tool result: a text answer.
- JSON mode (no schema): the text is `{"answer": "<words>"}`. A JSON schema: the text is
  `example_from_schema(schema)` as JSON.
- n choices (where the format has them): n copies of the answer; output tokens n times.
- Usage: input = 4 per message + count_tokens(its text) + IMAGE_TOKENS per image
  (+ count_tokens of the system text, + count_tokens of the tools' JSON);
  output = words, or count_tokens(the JSON) for a tool call or JSON answer.
- Embeddings: deterministic vectors of `dimensions` (default EMBEDDING_DIMENSIONS) floats.
"""

import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

EMBEDDING_DIMENSIONS = 8
IMAGE_TOKENS = 85


@dataclass
class ModelBehaviour:
    latency_ms: float = 0
    tokens_per_second: float = 0  # 0: as fast as possible
    completion_tokens: int = 16
    fail_rate: float = 0
    fail_status: int = 500
    retry_after: float | None = None
    hang: bool = False
    break_after: int | None = None  # chat streams: drop the connection after this many pieces


@dataclass
class SimulatorState:
    models: dict[str, ModelBehaviour] = field(default_factory=dict)
    rejected_keys: set[str] = field(default_factory=set)
    stats: Counter[str] = field(default_factory=Counter)
    seed: int = 0

    def behaviour(self, model: str) -> ModelBehaviour:
        return self.models.get(model) or self.models.get("*") or ModelBehaviour()


@dataclass
class SimContext:
    """What a wire-format module gets from the simulator app (gateway/simulator/app.py)."""

    state: SimulatorState
    # The per-request faults: counts the request, checks the key, sleeps, fails at random.
    apply_faults: Callable[[Request, str], Awaitable[Response | None]]
    # The key a request carries (Bearer, x-api-key, api-key, x-goog-api-key).
    api_key: Callable[[Request], str]


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: about one token per four characters, at least one per word."""
    return max(len(text.split()), (len(text) + 3) // 4)


def completion_words(n: int) -> list[str]:
    words = ["Gatehouse", "simulated", "answer", "token"]
    return [words[i % len(words)] for i in range(n)]


def answer_size(limit: Any, behaviour: ModelBehaviour) -> int:
    """How many words a text answer has: the knob, capped by the max tokens asked for."""
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return min(behaviour.completion_tokens, limit)
    return behaviour.completion_tokens


def example_from_schema(schema: Any, depth: int = 0) -> Any:
    """A value matching a JSON schema, made the same way every time."""
    if not isinstance(schema, dict) or depth > 8:
        return "Gatehouse"
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        required = schema.get("required") or list(properties)
        return {name: example_from_schema(properties.get(name), depth + 1) for name in required if name in properties}
    if kind == "array":
        return [example_from_schema(schema.get("items"), depth + 1)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "Gatehouse"


def json_answer(schema: Any | None, words: list[str]) -> str:
    """The text of a JSON-mode answer: from the schema if there is one."""
    if schema is not None:
        return json.dumps(example_from_schema(schema))
    return json.dumps({"answer": " ".join(words)})


def embedding_vector(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    seeded = random.Random(text)  # noqa: S311  (deterministic vectors, not security)
    return [round(seeded.uniform(-1, 1), 6) for _ in range(dimensions)]


def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": str(status)}}


@dataclass(frozen=True)
class Answer:
    """One choice's answer by the rules above: a text (JSON text in JSON mode) or one tool call."""

    text: str = ""
    tool_name: str = ""
    arguments: str = ""  # the tool call's arguments as JSON text
    output_tokens: int = 0
    pieces: tuple[str, ...] = ()  # what a stream sends, in order: words, or slices of the JSON

    @property
    def is_tool_call(self) -> bool:
        return bool(self.tool_name)


def json_pieces(text: str, size: int = 4) -> tuple[str, ...]:
    """JSON text cut into stream deltas of `size` characters (about one token each)."""
    return tuple(text[i : i + size] for i in range(0, len(text), size))


def plan_answer(
    *,
    words: list[str],
    tools: list[tuple[str, Any]],
    tools_allowed: bool = True,
    forced_tool: str | None = None,
    after_tool_result: bool = False,
    json_mode: bool = False,
    schema: Any | None = None,
) -> Answer:
    """The answer the rules give. `tools` holds (name, parameters schema) of the function tools
    offered; `tools_allowed` is False for tool choice "none"; `forced_tool` names a forced tool."""
    if tools and tools_allowed and not after_tool_result:
        name, parameters = next((tool for tool in tools if tool[0] == forced_tool), tools[0])
        arguments = json.dumps(example_from_schema(parameters if isinstance(parameters, dict) else {"type": "object"}))
        return Answer(
            tool_name=name, arguments=arguments, output_tokens=count_tokens(arguments), pieces=json_pieces(arguments)
        )
    if json_mode:
        text = json_answer(schema, words)
        return Answer(text=text, output_tokens=count_tokens(text), pieces=json_pieces(text))
    return Answer(
        text=" ".join(words),
        output_tokens=len(words),
        pieces=tuple(word if i == 0 else " " + word for i, word in enumerate(words)),
    )


def message_tokens(texts: list[str], images: int = 0) -> int:
    """One message's input tokens: 4 + count_tokens(its texts joined by spaces) + IMAGE_TOKENS per image."""
    return 4 + count_tokens(" ".join(text for text in texts if text)) + IMAGE_TOKENS * images

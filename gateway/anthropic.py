"""Translation between OpenAI chat completions and Anthropic Messages, both ways:
requests, responses, stream events, stop reasons, usage, text and tool calls."""

import time
from typing import Any

import orjson

DEFAULT_MAX_TOKENS = 4096
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _content_blocks(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content or []:
        if isinstance(part, dict) and part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
    return blocks


def request_to_anthropic(body: dict, upstream_model: str) -> dict:
    """An OpenAI chat request as an Anthropic Messages request."""
    system_parts: list[str] = []
    messages: list[dict] = []
    for message in body.get("messages", []):
        role = message.get("role")
        if role in {"system", "developer"}:
            system_parts.append(_text_of(message.get("content")))
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text_of(message.get("content")),
            }
            if messages and messages[-1]["role"] == "user" and isinstance(messages[-1]["content"], list):
                messages[-1]["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call.get("function", {})
                try:
                    arguments = orjson.loads(function.get("arguments") or "{}")
                except ValueError:
                    arguments = {}
                blocks.append(
                    {"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""), "input": arguments}
                )
            messages.append({"role": "assistant", "content": blocks})
        else:
            messages.append(
                {"role": "user", "content": _content_blocks(message.get("content")) or [{"type": "text", "text": ""}]}
            )
    request: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system_parts:
        request["system"] = "\n\n".join(system_parts)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            request[name] = body[name]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        request["stream"] = True
    tools = body.get("tools")
    if tools:
        request["tools"] = [
            {
                "name": tool.get("function", {}).get("name", ""),
                "description": tool.get("function", {}).get("description", ""),
                "input_schema": tool.get("function", {}).get("parameters") or {"type": "object", "properties": {}},
            }
            for tool in tools
            if isinstance(tool, dict)
        ]
        choice = body.get("tool_choice")
        if choice == "required":
            request["tool_choice"] = {"type": "any"}
        elif choice == "none":
            request["tool_choice"] = {"type": "none"}
        elif isinstance(choice, dict) and choice.get("function", {}).get("name"):
            request["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    return request


def response_from_anthropic(message: dict, alias: str) -> tuple[dict, int, int]:
    """(OpenAI chat completion, input tokens, output tokens) from an Anthropic message."""
    text = ""
    tool_calls = []
    for block in message.get("content", []):
        if block.get("type") == "text":
            text += block.get("text", "")
        elif block.get("type") == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
    usage = message.get("usage", {})
    input_tokens, output_tokens = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    completion = {
        "id": "chatcmpl-" + str(message.get("id", "")).removeprefix("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": alias,
        "choices": [
            {"index": 0, "message": reply, "finish_reason": STOP_REASONS.get(message.get("stop_reason"), "stop")}
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }
    return completion, input_tokens, output_tokens


class AnthropicStreamTranslator:
    """Feeds on Anthropic SSE events, yields OpenAI chat.completion.chunk payloads."""

    def __init__(self, alias: str, include_usage: bool):
        self.alias, self.include_usage = alias, include_usage
        self.id = "chatcmpl-stream"
        self.created = int(time.time())
        self.input_tokens = self.output_tokens = 0
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.alias,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, event: dict) -> list[dict]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message", {})
            self.id = "chatcmpl-" + str(message.get("id", "")).removeprefix("msg_")
            self.input_tokens = int(message.get("usage", {}).get("input_tokens", 0))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block", {})
            if block.get("type") == "tool_use":
                index = len(self.tool_index)
                self.tool_index[event.get("index", 0)] = index
                return [
                    self._chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": block.get("id", ""),
                                    "type": "function",
                                    "function": {"name": block.get("name", ""), "arguments": ""},
                                }
                            ]
                        }
                    )
                ]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta", {})
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tool_index.get(event.get("index", 0), 0)
                return [
                    self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": delta.get("partial_json", "")}}]}
                    )
                ]
            return []
        if kind == "message_delta":
            self.output_tokens = int(event.get("usage", {}).get("output_tokens", self.output_tokens))
            finish = STOP_REASONS.get(event.get("delta", {}).get("stop_reason"), "stop")
            chunks = [self._chunk({}, finish)]
            if self.include_usage:
                chunks.append(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.alias,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": self.input_tokens,
                            "completion_tokens": self.output_tokens,
                            "total_tokens": self.input_tokens + self.output_tokens,
                        },
                    }
                )
            return chunks
        return []

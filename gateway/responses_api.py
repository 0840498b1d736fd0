"""OpenAI's Responses API (`POST /v1/responses`) for deployments the gateway reaches through chat
completions, which is every provider but OpenAI itself.

To an OpenAI deployment the caller's body goes as it is; `native_usage` and `NativeMeter` read
the usage of its answer. For every other deployment `to_chat` turns the request into a chat
completions body, `from_chat` turns the chat completion into a Response object, and
`ResponsesStream` turns chat.completion.chunk objects into the Responses API's typed
server-sent events, as the official `openai` SDK parses them.

The gateway keeps no conversation state. It stores no responses (so nothing can be retrieved,
continued or listed later), because that would mean holding every caller's prompts and answers
in the gateway, and a conversation would be pinned to one worker or need a store of its own.
`previous_response_id` and `conversation` are therefore refused with a 400 for translated
deployments: the caller sends the whole conversation in `input` on every request (earlier
output items included), which is how OpenAI's own `store: false` mode works.

Each Responses parameter, for a deployment the gateway translates to (a 400 names the parameter):

Parameter                    What happens
---------------------------  ---------------------------------------------------------------------
model                        translated: the route alias, as for chat completions
input, a string              translated: one user message
input, message items         translated: role developer becomes system; parts input_text,
                             output_text and refusal become text, input_image (https or data URL)
                             an image_url part of a user message. input_image by file_id,
                             input_file, input_audio, images outside user messages: 400
input, function_call and     translated: assistant tool_calls (joined to the assistant text before
  function_call_output       them) and tool messages (text output only)
input, reasoning items       accepted and left out: they carry an OpenAI model's private reasoning,
                             which chat completions has no field for; the messages and tool calls
                             around them carry the conversation
input, item_reference and    400
  built-in tool items
input items' id, status,     accepted, not forwarded: bookkeeping of earlier output
  phase
instructions                 translated: a leading system message
tools of type function       translated: chat function tools (name, description, parameters,
                             strict); defer_loading, async, output_schema, allowed_callers without
                             "direct": 400
tools of any other type      400 naming the type: web_search, file_search, computer_use_preview,
                             code_interpreter, image_generation, mcp, custom, shell, ...
tool_choice                  auto, none, required, {type: function, name}: translated;
                             allowed_tools naming functions: translated by offering the model only
                             those tools; built-in tool kinds: 400
text.format                  translated to response_format: text, json_object, json_schema
text.verbosity               translated to verbosity
max_output_tokens            translated to max_tokens
temperature, top_p           translated
parallel_tool_calls          translated (sent when there are tools to call)
top_logprobs                 translated to logprobs and top_logprobs
include                      message.output_text.logprobs: translated to logprobs, shown in the
                             output; reasoning.encrypted_content, message.input_image.image_url:
                             accepted (translated answers hold no reasoning items; the gateway
                             lists no input items); any other value (output of built-in tools): 400
reasoning.effort             translated to reasoning_effort
reasoning.summary,           "auto" accepted (a summary where the model offers one; through chat
  reasoning.generate_summary completions none does); "concise", "detailed": 400
reasoning.context, .mode     "auto" and "standard" accepted (the defaults); other values: 400
user, safety_identifier,     translated to the chat parameters of the same name
  prompt_cache_key,
  prompt_cache_retention,
  service_tier
metadata                     accepted and echoed in the response, not forwarded: it labels a
                             stored response at OpenAI, and the gateway stores none
store                        accepted, either value: the gateway stores nothing, so no response can
                             be retrieved later
stream                       translated: stream, with stream_options.include_usage
stream_options.              accepted: translated streams carry no obfuscation padding
  include_obfuscation
max_tool_calls               accepted and echoed: it caps built-in tool calls, which translated
                             deployments never make
truncation                   "disabled" (the default) accepted; "auto": 400, the gateway never cuts
                             a conversation
background                   false accepted; true: 400, the gateway answers in the foreground and
                             keeps nothing to fetch later
previous_response_id,        400: no conversation state (above)
  conversation
prompt, prompt_cache_options 400: features of OpenAI's own service
  context_management,
  moderation, access_programs,
  image, background_options
any other parameter          400 naming it

A null value counts as absent throughout, as OpenAI treats it.
"""

import secrets
import time
from typing import Any

import orjson

from .errors import GatewayError, invalid_request
from .providers import Usage, token_count

MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text"})
IMAGE_DETAILS = frozenset({"auto", "low", "high"})
TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})
LOGPROBS_INCLUDE = "message.output_text.logprobs"
HARMLESS_INCLUDES = frozenset({"reasoning.encrypted_content", "message.input_image.image_url"})
METADATA_PAIRS, METADATA_KEY_LENGTH, METADATA_VALUE_LENGTH = 16, 64, 512
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

NO_STATE = (
    "the gateway keeps no conversation state for deployments it reaches through chat completions; "
    "send the whole conversation (earlier output items included) in 'input' on every request."
)
OPENAI_ONLY = "it is a feature of OpenAI's own service, and this deployment is reached through chat completions."
BUILT_IN_TOOLS = "tools run only on OpenAI deployments; this deployment takes 'function' tools."

# Parameters honoured only by OpenAI's own service: refused when set to anything but null.
OPENAI_SERVICE_ONLY = (
    "prompt",
    "prompt_cache_options",
    "moderation",
    "access_programs",
    "image",
    "background_options",
)
# Chat completions has a parameter of the same name and meaning.
SAME_NAME_STRINGS = ("user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier")
KNOWN_PARAMETERS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "metadata",
        "stream",
        "stream_options",
        "store",
        "previous_response_id",
        "conversation",
        "reasoning",
        "include",
        "background",
        "truncation",
        "top_logprobs",
        "max_tool_calls",
        "context_management",
        *OPENAI_SERVICE_ONLY,
        *SAME_NAME_STRINGS,
    }
)


def refusal(name: str, reason: str) -> GatewayError:
    """The 400 for a Responses parameter a translated deployment cannot honour."""
    return GatewayError(400, "unsupported_parameter", f"'{name}' is not supported for this model: {reason}")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as a chat-completions body; 400 naming the first parameter that is
    malformed or that a deployment reached through chat completions cannot honour."""
    chat, refusals = translate(body)
    if refusals:
        raise refusals[0]
    return chat


def translate(body: dict[str, Any]) -> tuple[dict[str, Any], list[GatewayError]]:
    """(the chat body, the 400s a translated deployment answers with: empty when everything
    translates). A malformed body raises at once; what only OpenAI can honour is listed, so a
    request bound for an OpenAI deployment still yields a chat body to estimate its cost from."""
    return _Translation(body).run()


class _Translation:
    def __init__(self, body: dict[str, Any]):
        self.body = body
        self.refusals: list[GatewayError] = []
        self.chat: dict[str, Any] = {}

    def refuse(self, name: str, reason: str) -> None:
        self.refusals.append(refusal(name, reason))

    def run(self) -> tuple[dict[str, Any], list[GatewayError]]:
        body, chat = self.body, self.chat
        for name in sorted(body.keys() - KNOWN_PARAMETERS):
            if body[name] is not None:
                self.refuse(name, "the gateway does not know this Responses API parameter.")
        for name in OPENAI_SERVICE_ONLY:
            if body.get(name) is not None:
                self.refuse(name, OPENAI_ONLY)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid_request("'model' must be a non-empty string.")
        chat["model"] = model
        self.state()
        chat["messages"] = self.instructions() + self.input_messages()
        self.tool_choice(self.tools())
        self.text()
        self.sampling()
        self.reasoning()
        self.include()
        self.stream()
        self.accepted()
        for name in SAME_NAME_STRINGS:
            value = body.get(name)
            if value is not None:
                chat[name] = _string(value, name)
        return chat, self.refusals

    # Conversation -------------------------------------------------------------------------

    def state(self) -> None:
        for name in ("previous_response_id", "conversation"):
            if self.body.get(name) is not None:
                self.refuse(name, NO_STATE)
        if self.body.get("context_management"):
            self.refuse("context_management", OPENAI_ONLY)
        if self.body.get("background") not in (None, False):
            if not isinstance(self.body["background"], bool):
                raise invalid_request("'background' must be true or false.")
            self.refuse("background", "the gateway answers in the foreground and keeps no response to fetch later.")
        truncation = self.body.get("truncation")
        if truncation not in (None, "disabled", "auto"):
            raise invalid_request("'truncation' must be 'auto' or 'disabled'.")
        if truncation == "auto":
            self.refuse("truncation", "the gateway never cuts a conversation; send one that fits the model.")

    def instructions(self) -> list[dict[str, Any]]:
        instructions = self.body.get("instructions")
        if instructions is None:
            return []
        return [{"role": "system", "content": _string(instructions, "instructions")}]

    def input_messages(self) -> list[dict[str, Any]]:
        value = self.body.get("input")
        if value is None:
            if not self.refusals:  # a stored prompt or conversation would supply it at OpenAI
                raise invalid_request("'input' is required: a string or a list of input items.")
            return []
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if not isinstance(value, list):
            raise invalid_request("'input' must be a string or a list of input items.")
        messages: list[dict[str, Any]] = []
        for index, item in enumerate(value):
            where = f"input[{index}]"
            if not isinstance(item, dict):
                raise invalid_request(f"'{where}' must be an object.")
            kind = item.get("type", "message")
            if kind == "message":
                self.message(item, where, messages)
            elif kind == "function_call":
                self.function_call(item, where, messages)
            elif kind == "function_call_output":
                self.function_call_output(item, where, messages)
            elif kind == "reasoning":
                continue  # another model's private reasoning: no chat field carries it
            elif kind == "item_reference":
                self.refuse(where, "an item reference points at a stored item; " + NO_STATE)
            elif isinstance(kind, str):
                self.refuse(f"{where}.type", f"'{kind}' items come from tools that only OpenAI deployments run.")
            else:
                raise invalid_request(f"'{where}.type' must be a string.")
        return messages

    def message(self, item: dict[str, Any], where: str, messages: list[dict[str, Any]]) -> None:
        role = item.get("role")
        if role not in MESSAGE_ROLES:
            raise invalid_request(f"'{where}.role' must be one of assistant, developer, system, user.")
        content = item.get("content")
        if isinstance(content, str):
            chat_content: str | list[dict[str, Any]] = content
        elif isinstance(content, list):
            chat_content = self.parts(content, f"{where}.content", role)
        else:
            raise invalid_request(f"'{where}.content' must be a string or a list of content parts.")
        messages.append({"role": "system" if role == "developer" else role, "content": chat_content})

    def parts(self, content: list[Any], where: str, role: str) -> str | list[dict[str, Any]]:
        """Chat content: one string when every part is text (the form every provider takes),
        else a list of text and image_url parts."""
        parts: list[dict[str, Any]] = []
        for index, part in enumerate(content):
            at = f"{where}[{index}]"
            if not isinstance(part, dict):
                raise invalid_request(f"'{at}' must be an object.")
            kind = part.get("type")
            if kind in TEXT_PARTS:
                parts.append({"type": "text", "text": _string(part.get("text"), f"{at}.text")})
            elif kind == "refusal":
                parts.append({"type": "text", "text": _string(part.get("refusal"), f"{at}.refusal")})
            elif kind == "input_image":
                image = self.image(part, at, role)
                if image is not None:
                    parts.append(image)
            elif kind in ("input_file", "input_audio"):
                self.refuse(at, f"'{kind}' parts reach only OpenAI deployments; send text or images.")
            elif isinstance(kind, str):
                self.refuse(f"{at}.type", f"content parts of type '{kind}' reach only OpenAI deployments.")
            else:
                raise invalid_request(f"'{at}.type' must be a string.")
        if all(part["type"] == "text" for part in parts):
            return "".join(part["text"] for part in parts)
        return parts

    def image(self, part: dict[str, Any], at: str, role: str) -> dict[str, Any] | None:
        if part.get("file_id") is not None:
            self.refuse(
                f"{at}.file_id",
                "files uploaded to OpenAI cannot reach this deployment; send the image in 'image_url' "
                "(an https URL or a data URL).",
            )
            return None
        url = part.get("image_url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://", "data:image/")):
            raise invalid_request(f"'{at}.image_url' must be an http(s) URL or a data:image/... URL.")
        if role != "user":
            self.refuse(at, "through chat completions, images go in user messages only.")
            return None
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail == "original":
            self.refuse(f"{at}.detail", "chat completions take 'auto', 'low' or 'high'.")
        elif detail is not None:
            if detail not in IMAGE_DETAILS:
                raise invalid_request(f"'{at}.detail' must be one of auto, low, high, original.")
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}

    def function_call(self, item: dict[str, Any], where: str, messages: list[dict[str, Any]]) -> None:
        call = {
            "id": _string(item.get("call_id"), f"{where}.call_id", empty=False),
            "type": "function",
            "function": {
                "name": _string(item.get("name"), f"{where}.name", empty=False),
                "arguments": _string(item.get("arguments"), f"{where}.arguments"),
            },
        }
        if item.get("namespace") is not None:
            self.refuse(f"{where}.namespace", "namespaced tools reach only OpenAI deployments.")
        # An answer's text and the calls after it are one assistant turn in chat completions.
        if messages and messages[-1]["role"] == "assistant":
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})

    def function_call_output(self, item: dict[str, Any], where: str, messages: list[dict[str, Any]]) -> None:
        call_id = _string(item.get("call_id"), f"{where}.call_id", empty=False)
        output = item.get("output")
        if isinstance(output, str):
            text = output
        elif isinstance(output, list):
            texts: list[str] = []
            for index, part in enumerate(output):
                at = f"{where}.output[{index}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "input_text":
                    texts.append(_string(part.get("text"), f"{at}.text"))
                elif isinstance(kind, str):
                    self.refuse(at, f"through chat completions a tool's output is text only, not '{kind}'.")
                else:
                    raise invalid_request(f"'{at}' must be a content part with a 'type'.")
            text = "".join(texts)
        else:
            raise invalid_request(f"'{where}.output' must be a string or a list of content parts.")
        messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    # Tools --------------------------------------------------------------------------------

    def tools(self) -> list[dict[str, Any]]:
        tools = self.body.get("tools")
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise invalid_request("'tools' must be a list.")
        chat_tools: list[dict[str, Any]] = []
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise invalid_request(f"'{where}' must be an object with a 'type'.")
            if tool["type"] != "function":
                self.refuse(where, f"'{tool['type']}' {BUILT_IN_TOOLS}")
                continue
            function: dict[str, Any] = {"name": _string(tool.get("name"), f"{where}.name", empty=False)}
            description = tool.get("description")
            if description is not None:
                function["description"] = _string(description, f"{where}.description")
            parameters = tool.get("parameters")
            if parameters is not None:
                if not isinstance(parameters, dict):
                    raise invalid_request(f"'{where}.parameters' must be a JSON Schema object.")
                function["parameters"] = parameters
            strict = tool.get("strict")
            if strict is not None:
                function["strict"] = _boolean(strict, f"{where}.strict")
            self.function_options(tool, where)
            chat_tools.append({"type": "function", "function": function})
        return chat_tools

    def function_options(self, tool: dict[str, Any], where: str) -> None:
        for name in ("defer_loading", "async"):
            if tool.get(name):
                self.refuse(f"{where}.{name}", OPENAI_ONLY)
        if tool.get("output_schema") is not None:
            self.refuse(f"{where}.output_schema", "chat completions have no schema for a function's output.")
        callers = tool.get("allowed_callers")
        if callers is not None and "direct" not in callers:
            self.refuse(f"{where}.allowed_callers", "through chat completions the model calls functions directly.")

    def tool_choice(self, tools: list[dict[str, Any]]) -> None:
        choice = self.body.get("tool_choice")
        chat = self.chat
        names = [tool["function"]["name"] for tool in tools]
        if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
            allowed = self.allowed_tools(choice, names)
            tools = [tool for tool in tools if tool["function"]["name"] in allowed]
            choice = choice.get("mode")
        if tools:
            chat["tools"] = tools
            parallel = self.body.get("parallel_tool_calls")
            if parallel is not None:
                chat["parallel_tool_calls"] = _boolean(parallel, "parallel_tool_calls")
        elif self.body.get("parallel_tool_calls") is not None:
            _boolean(self.body["parallel_tool_calls"], "parallel_tool_calls")  # nothing to call: honoured
        if choice is None:
            return
        if isinstance(choice, str):
            if choice not in TOOL_CHOICE_MODES:
                raise invalid_request("'tool_choice' must be 'auto', 'none', 'required' or an object.")
            if choice == "required" and not tools:
                if self.refusals:  # the tools it would call were refused: that 400 says why
                    return
                raise invalid_request("'tool_choice' is 'required' but there are no function tools to call.")
            if tools:
                chat["tool_choice"] = choice
            return
        if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
            raise invalid_request("'tool_choice' must be 'auto', 'none', 'required' or an object with a 'type'.")
        if choice["type"] != "function":
            self.refuse("tool_choice", f"'{choice['type']}' {BUILT_IN_TOOLS}")
            return
        name = _string(choice.get("name"), "tool_choice.name", empty=False)
        if name not in names:
            raise invalid_request(f"'tool_choice' names the function {name!r}, which is not among 'tools'.")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}

    def allowed_tools(self, choice: dict[str, Any], names: list[str]) -> set[str]:
        if choice.get("mode") not in ("auto", "required"):
            raise invalid_request("'tool_choice.mode' must be 'auto' or 'required'.")
        listed = choice.get("tools")
        if not isinstance(listed, list):
            raise invalid_request("'tool_choice.tools' must be a list of tools.")
        allowed: set[str] = set()
        for index, tool in enumerate(listed):
            where = f"tool_choice.tools[{index}]"
            if not isinstance(tool, dict):
                raise invalid_request(f"'{where}' must be an object.")
            if tool.get("type") != "function":
                self.refuse(where, f"'{tool.get('type')}' {BUILT_IN_TOOLS}")
                continue
            name = _string(tool.get("name"), f"{where}.name", empty=False)
            if name not in names:
                raise invalid_request(f"'{where}' names the function {name!r}, which is not among 'tools'.")
            allowed.add(name)
        return allowed

    # Output shape and sampling ----------------------------------------------------------

    def text(self) -> None:
        text = self.body.get("text")
        if text is None:
            return
        if not isinstance(text, dict):
            raise invalid_request("'text' must be an object.")
        for name in sorted(text.keys() - {"format", "verbosity"}):
            if text[name] is not None:
                self.refuse(f"text.{name}", "the gateway does not know this option.")
        verbosity = text.get("verbosity")
        if verbosity is not None:
            if verbosity not in ("low", "medium", "high"):
                raise invalid_request("'text.verbosity' must be 'low', 'medium' or 'high'.")
            self.chat["verbosity"] = verbosity
        form = text.get("format")
        if form is None:
            return
        if not isinstance(form, dict):
            raise invalid_request("'text.format' must be an object with a 'type'.")
        kind = form.get("type")
        if kind == "json_object":
            self.chat["response_format"] = {"type": "json_object"}
        elif kind == "json_schema":
            schema = form.get("schema")
            if not isinstance(schema, dict):
                raise invalid_request("'text.format.schema' must be a JSON Schema object.")
            spec: dict[str, Any] = {"name": _string(form.get("name"), "text.format.name", empty=False)}
            if form.get("description") is not None:
                spec["description"] = _string(form["description"], "text.format.description")
            spec["schema"] = schema
            if form.get("strict") is not None:
                spec["strict"] = _boolean(form["strict"], "text.format.strict")
            self.chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif kind != "text":
            if not isinstance(kind, str):
                raise invalid_request("'text.format.type' must be 'text', 'json_object' or 'json_schema'.")
            self.refuse("text.format.type", f"'{kind}' is not a format that chat completions support.")

    def sampling(self) -> None:
        body, chat = self.body, self.chat
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is not None:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise invalid_request(f"'{name}' must be a number.")
                chat[name] = value
        limit = body.get("max_output_tokens")
        if limit is not None:
            chat["max_tokens"] = _whole_number(limit, "max_output_tokens", 1)
        top = body.get("top_logprobs")
        if top is not None:
            chat["logprobs"] = True
            chat["top_logprobs"] = _whole_number(top, "top_logprobs", 0, 20)

    def reasoning(self) -> None:
        reasoning = self.body.get("reasoning")
        if reasoning is None:
            return
        if not isinstance(reasoning, dict):
            raise invalid_request("'reasoning' must be an object.")
        effort = reasoning.get("effort")
        if effort is not None:
            self.chat["reasoning_effort"] = _string(effort, "reasoning.effort", empty=False)
        for name in ("summary", "generate_summary"):
            if reasoning.get(name) not in (None, "auto"):
                self.refuse(f"reasoning.{name}", "chat completions return no reasoning summaries.")
        if reasoning.get("context") not in (None, "auto"):
            self.refuse("reasoning.context", OPENAI_ONLY)
        if reasoning.get("mode") not in (None, "standard"):
            self.refuse("reasoning.mode", OPENAI_ONLY)
        for name in sorted(reasoning.keys() - {"effort", "summary", "generate_summary", "context", "mode"}):
            if reasoning[name] is not None:
                self.refuse(f"reasoning.{name}", "the gateway does not know this option.")

    def include(self) -> None:
        include = self.body.get("include")
        if include is None:
            return
        if not isinstance(include, list) or not all(isinstance(value, str) for value in include):
            raise invalid_request("'include' must be a list of strings.")
        for value in include:
            if value == LOGPROBS_INCLUDE:
                self.chat["logprobs"] = True
            elif value not in HARMLESS_INCLUDES:
                self.refuse("include", f"{value!r} is output of a tool that only OpenAI deployments run.")

    def stream(self) -> None:
        stream = self.body.get("stream")
        if stream is not None and _boolean(stream, "stream"):
            self.chat["stream"] = True
            self.chat["stream_options"] = {"include_usage": True}
        options = self.body.get("stream_options")
        if options is None:
            return
        if not isinstance(options, dict):
            raise invalid_request("'stream_options' must be an object.")
        for name, value in options.items():
            if name == "include_obfuscation":
                _boolean(value, "stream_options.include_obfuscation")  # no padding on translated streams
            elif value is not None:
                self.refuse(f"stream_options.{name}", "the gateway does not know this option.")

    def accepted(self) -> None:
        """Parameters honoured without sending anything on: checked for shape only."""
        body = self.body
        if body.get("store") is not None:
            _boolean(body["store"], "store")  # nothing is ever stored by the gateway
        if body.get("max_tool_calls") is not None:
            _whole_number(body["max_tool_calls"], "max_tool_calls", 0)  # caps built-in tools only
        metadata = body.get("metadata")
        if metadata is None:
            return
        if not isinstance(metadata, dict) or len(metadata) > METADATA_PAIRS:
            raise invalid_request(f"'metadata' must be an object of at most {METADATA_PAIRS} pairs.")
        for key, value in metadata.items():
            if len(key) > METADATA_KEY_LENGTH or not isinstance(value, str) or len(value) > METADATA_VALUE_LENGTH:
                raise invalid_request(
                    f"'metadata' keys must be at most {METADATA_KEY_LENGTH} characters and its values "
                    f"strings of at most {METADATA_VALUE_LENGTH}."
                )


def _string(value: object, name: str, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise invalid_request(f"'{name}' must be a {'' if empty else 'non-empty '}string.")
    return value


def _boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise invalid_request(f"'{name}' must be true or false.")
    return value


def _whole_number(value: object, name: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise invalid_request(f"'{name}' must be a whole number {bounds}.")
    return value


# Answers -------------------------------------------------------------------------------------


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _usage(reported: object) -> dict[str, Any]:
    usage = reported if isinstance(reported, dict) else {}
    prompt, completion = token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = token_count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = token_count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _echoed_tools(request: dict[str, Any]) -> list[dict[str, Any]]:
    tools = request.get("tools")
    return [
        {
            "type": "function",
            "name": tool.get("name"),
            "description": tool.get("description"),
            "parameters": tool.get("parameters"),
            "strict": tool.get("strict"),
        }
        for tool in tools or []
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]


def _echo(request: dict[str, Any]) -> dict[str, Any]:
    """The request's settings, as a Response object repeats them."""
    parallel = request.get("parallel_tool_calls")
    return {
        "instructions": request.get("instructions"),
        "metadata": request.get("metadata") or {},
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": _echoed_tools(request),
        "text": request.get("text") or {"format": {"type": "text"}},
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "previous_response_id": None,
        "reasoning": request.get("reasoning"),
        "truncation": request.get("truncation") or "disabled",
        "background": False,
        "top_logprobs": request.get("top_logprobs"),
        "user": request.get("user"),
        "safety_identifier": request.get("safety_identifier"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "service_tier": request.get("service_tier"),
    }


def _response(
    response_id: str,
    created_at: int,
    model: str,
    request: dict[str, Any],
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    status: str,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "model": model,
        "output": output,
        "usage": usage,
        **_echo(request),
    }


def _wants_logprobs(request: dict[str, Any]) -> bool:
    include = request.get("include")
    return isinstance(include, list) and LOGPROBS_INCLUDE in include


def _logprobs(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat choice's token log probabilities in the Responses shape."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [
        {
            "token": entry.get("token", ""),
            "bytes": entry.get("bytes") or [],
            "logprob": entry.get("logprob", 0.0),
            "top_logprobs": [
                {"token": top.get("token", ""), "bytes": top.get("bytes") or [], "logprob": top.get("logprob", 0.0)}
                for top in entry.get("top_logprobs") or []
                if isinstance(top, dict)
            ],
        }
        for entry in content or []
        if isinstance(entry, dict)
    ]


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some providers answer with text parts
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _function_call(call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": _new_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def from_chat(completion: dict[str, Any], model: str, request: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as a Response object; `request` is the caller's Responses body."""
    choices = completion.get("choices")
    choice = _object(choices[0]) if isinstance(choices, list) and choices else {}
    message = _object(choice.get("message"))
    incomplete = INCOMPLETE_REASONS.get(choice.get("finish_reason") or "")
    item_status = "incomplete" if incomplete else "completed"
    text, refusal_text = _text_of(message.get("content")), message.get("refusal")
    calls = [call for call in message.get("tool_calls") or [] if isinstance(call, dict)]

    content: list[dict[str, Any]] = []
    if text or not (refusal_text or calls):
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
        part["logprobs"] = _logprobs(choice) if _wants_logprobs(request) else []
        content.append(part)
    if isinstance(refusal_text, str) and refusal_text:
        content.append({"type": "refusal", "refusal": refusal_text})
    output: list[dict[str, Any]] = []
    if content:
        output.append(
            {"id": _new_id("msg"), "type": "message", "role": "assistant", "status": item_status, "content": content}
        )
    for call in calls:
        function = _object(call.get("function"))
        output.append(
            _function_call(
                call.get("id") or _new_id("call"),
                function.get("name") or "",
                function.get("arguments") or "",
                item_status,
            )
        )
    created = completion.get("created")
    return _response(
        _new_id("resp"),
        created if isinstance(created, int) else int(time.time()),
        model,
        request,
        output,
        _usage(completion.get("usage")),
        "incomplete" if incomplete else "completed",
        incomplete,
    )


class ResponsesStream:
    """chat.completion.chunk objects in, the Responses API's server-sent events out.

    Output items open as the chunks bring them: at most one assistant message (index 0 when
    the text comes first), then one function_call item per tool call. Every open item closes
    when the finish reason arrives; response.completed (or response.incomplete) follows the
    usage chunk, or `close()` when the provider sent none.
    """

    def __init__(self, model: str, request: dict[str, Any]):
        self.model, self.request = model, request
        self.response_id = _new_id("resp")
        self.created_at = int(time.time())
        self.logprobs = _wants_logprobs(request)
        self.sequence = 0
        self.started = self.done = False
        self.output: list[dict[str, Any]] = []  # by output index; final items replace open ones
        self.message: int | None = None  # output index of the open message
        self.part: dict[str, Any] | None = None  # its open content part
        self.part_logprobs: list[dict[str, Any]] = []
        self.calls: dict[int, int] = {}  # chat tool-call index -> output index, while open
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.pending: list[bytes] = []

    # Public -------------------------------------------------------------------------------

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if self.done:
            return b""
        self.start()
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self.choice(choice)
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
            if self.finish_reason is not None:
                self.finish()
        return self.flush()

    def close(self) -> bytes:
        """The closing events when the provider's stream ended without them, else b""."""
        if self.done:
            return b""
        if self.finish_reason is None:
            return self.fail("The provider's stream ended before the answer was complete.")
        self.start()
        self.finish()
        return self.flush()

    def fail(self, message: str) -> bytes:
        """response.failed, for a provider error in mid-stream; b"" once the stream has ended."""
        if self.done:
            return b""
        self.start()
        self.close_items("incomplete")
        error = {"code": "server_error", "message": message}
        self.emit("response.failed", response=self.snapshot("failed", error=error))
        self.done = True
        return self.flush()

    # Events -------------------------------------------------------------------------------

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        self.pending.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")

    def flush(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data

    def snapshot(
        self, status: str, incomplete: str | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return _response(
            self.response_id,
            self.created_at,
            self.model,
            self.request,
            [dict(item) for item in self.output],
            self.usage if status in ("completed", "incomplete", "failed") else None,
            status,
            incomplete,
            error,
        )

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.emit("response.created", response=self.snapshot("in_progress"))
        self.emit("response.in_progress", response=self.snapshot("in_progress"))

    def choice(self, choice: dict[str, Any]) -> None:
        delta = _object(choice.get("delta"))
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.text("output_text", content, _logprobs(choice) if self.logprobs else [])
        refusal_text = delta.get("refusal")
        if isinstance(refusal_text, str) and refusal_text:
            self.text("refusal", refusal_text, [])
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                self.tool_call(call)
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
            self.close_items("incomplete" if self.finish_reason in INCOMPLETE_REASONS else "completed")

    def text(self, kind: str, delta: str, logprobs: list[dict[str, Any]]) -> None:
        if self.message is None:
            self.message = len(self.output)
            item = {
                "id": _new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            self.output.append(item)
            self.emit("response.output_item.added", output_index=self.message, item=_copy(item))
        item = self.output[self.message]
        if self.part is not None and self.part["type"] != kind:
            self.close_part()
        if self.part is None:
            self.part = (
                {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                if kind == "output_text"
                else {"type": "refusal", "refusal": ""}
            )
            self.emit(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self.message,
                content_index=len(item["content"]),
                part=dict(self.part),
            )
        where = {"item_id": item["id"], "output_index": self.message, "content_index": len(item["content"])}
        if kind == "output_text":
            self.part["text"] += delta
            self.part_logprobs.extend(logprobs)
            self.emit("response.output_text.delta", **where, delta=delta, logprobs=logprobs)
        else:
            self.part["refusal"] += delta
            self.emit("response.refusal.delta", **where, delta=delta)

    def close_part(self) -> None:
        if self.message is None or self.part is None:
            return
        item, part = self.output[self.message], self.part
        where = {"item_id": item["id"], "output_index": self.message, "content_index": len(item["content"])}
        if part["type"] == "output_text":
            part["logprobs"] = self.part_logprobs
            self.emit("response.output_text.done", **where, text=part["text"], logprobs=part["logprobs"])
        else:
            self.emit("response.refusal.done", **where, refusal=part["refusal"])
        self.emit("response.content_part.done", **where, part=_copy(part))
        item["content"].append(part)
        self.part, self.part_logprobs = None, []

    def tool_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        function = _object(call.get("function"))
        name, arguments = function.get("name"), function.get("arguments")
        if index not in self.calls:
            self.calls[index] = len(self.output)
            item = _function_call(
                call.get("id") or _new_id("call"), name if isinstance(name, str) else "", "", "in_progress"
            )
            self.output.append(item)
            self.emit("response.output_item.added", output_index=self.calls[index], item=dict(item))
        output_index = self.calls[index]
        item = self.output[output_index]
        if isinstance(name, str) and name and not item["name"]:
            item["name"] = name  # a provider that sends the name after the first fragment
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            self.emit(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=output_index, delta=arguments
            )

    def close_items(self, status: str) -> None:
        """Close every open item in output order: a message with its part, then tool calls."""
        closing = sorted([*self.calls.values(), *([self.message] if self.message is not None else [])])
        for output_index in closing:
            item = self.output[output_index]
            if item["type"] == "message":
                self.close_part()
                self.message = None
            else:
                self.emit(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=output_index,
                    arguments=item["arguments"],
                )
            item["status"] = status
            self.emit("response.output_item.done", output_index=output_index, item=_copy(item))
        self.calls = {}

    def finish(self) -> None:
        self.close_items("completed")
        incomplete = INCOMPLETE_REASONS.get(self.finish_reason or "")
        if self.usage is None:
            self.usage = _usage(None)
        if incomplete:
            self.emit("response.incomplete", response=self.snapshot("incomplete", incomplete))
        else:
            self.emit("response.completed", response=self.snapshot("completed"))
        self.done = True


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """An item as it stands now: later deltas must not change what an event already carries."""
    copied = dict(item)
    if isinstance(item.get("content"), list):
        copied["content"] = [dict(part) for part in item["content"]]
    return copied


# Native pass-through (OpenAI deployments) --------------------------------------------------


def _reported(usage: object) -> Usage:
    if not isinstance(usage, dict) or not usage:
        return Usage()
    return Usage(token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens")), True)


def native_usage(document: dict[str, Any]) -> Usage:
    """The usage OpenAI reported in a Response object (reported=False when it reported none)."""
    return _reported(document.get("usage"))


class NativeMeter:
    """Reads the usage from OpenAI's own Responses stream as its events go by."""

    def __init__(self) -> None:
        self.usage = Usage()

    def feed(self, event: dict[str, Any]) -> None:
        if event.get("type") not in TERMINAL_EVENTS:
            return
        response = event.get("response")
        if isinstance(response, dict):
            reported = _reported(response.get("usage"))
            if reported.reported:
                usage = self.usage
                usage.input_tokens, usage.output_tokens, usage.reported = (
                    reported.input_tokens,
                    reported.output_tokens,
                    True,
                )

"""The Gemini API and Vertex AI wire formats of the simulator, answering by behaviour.py's rules.

Routes:
- `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
  `:batchEmbedContents`, `:embedContent` (key in `x-goog-api-key` or `?key=`), and
  `GET /v1beta/models` (the model list a credential test reads).
- `POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`,
  `:streamGenerateContent?alt=sse`, `:predict` (embeddings): only with a Bearer token that
  `POST /_sim/google/token` issued and that has not expired; 401 otherwise. Likewise
  `GET /v1/projects/{project}/locations/{location}/models` (a credential test reads it).
- `POST /_sim/google/token`: the OAuth JWT-bearer grant of a service account. It checks the
  grant type and the JWT's shape and claims (RS256, aud is the URL it was posted to, the
  cloud-platform scope, exp in the future and at most an hour after iat) but not its
  signature, which needs the public key. An issuer listed in `rejected_keys` gets
  invalid_grant. Each exchange counts as "google-token" in the stats.

Requests are checked as strictly as Google checks them where a translation could go wrong:
unknown fields, roles, part shapes, a function response that does not follow as many calls,
a function call turn without a thought signature (as Gemini 3 refuses), responseJsonSchema
without the JSON MIME type. Errors come in Google's shape {"error": {code, message, status}}.

Counting, in Google's terms of behaviour.py's rules: a message is one entry of `contents`; its
text is its text parts and the JSON of its function calls' args and function responses'
response, joined by spaces; each inlineData or fileData part counts IMAGE_TOKENS. The system
instruction counts its text only, and the tools count the JSON of `tools`.
"""

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .behaviour import (
    EMBEDDING_DIMENSIONS,
    IMAGE_TOKENS,
    ModelBehaviour,
    SimContext,
    answer_size,
    completion_words,
    count_tokens,
    embedding_vector,
    example_from_schema,
    json_answer,
)

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_LIFETIME = 3599
SKIP_SIGNATURE = "skip_thought_signature_validator"
SIGNATURE_PREFIX = "gatehouse-sim:"
GEMINI_MODELS = {
    "gemini-2.5-flash": ["generateContent", "streamGenerateContent", "countTokens"],
    "gemini-2.5-pro": ["generateContent", "streamGenerateContent", "countTokens"],
    "gemini-embedding-001": ["embedContent", "batchEmbedContents"],
}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings"}
GENERATION_FIELDS = {
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
    "mediaResolution",
}
PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
PART_EXTRAS = {"thought", "thoughtSignature"}


class Invalid(Exception):
    """A request Google would answer with 400 INVALID_ARGUMENT."""


def google_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN")}}
    return JSONResponse(body, status_code=status, headers=headers)


def google_fault(fault: Response) -> Response:
    """A fault of the shared machinery (OpenAI's error shape) in Google's shape."""
    try:
        message = json.loads(bytes(fault.body))["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = "Simulated failure."
    retry_after = fault.headers.get("retry-after")
    return google_error(fault.status_code, message, {"retry-after": retry_after} if retry_after else None)


def signature_for(name: str) -> str:
    return base64.b64encode((SIGNATURE_PREFIX + name).encode()).decode()


def _signature_valid(signature: Any, name: str) -> bool:
    return isinstance(signature, str) and signature in {SKIP_SIGNATURE, signature_for(name)}


# Checking a generateContent request ----------------------------------------------------------


def _check_part(part: Any, where: str, vertex: bool) -> None:
    if not isinstance(part, dict):
        raise Invalid(f"{where} must be an object.")
    data = [key for key in PART_DATA if key in part]
    unknown = set(part) - set(PART_DATA) - PART_EXTRAS
    if unknown:
        raise Invalid(f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at '{where}'.")
    if len(data) != 1:
        raise Invalid(f"{where} must hold exactly one of {', '.join(PART_DATA)}.")
    kind = data[0]
    value = part[kind]
    if kind == "text" and not isinstance(value, str):
        raise Invalid(f"{where}.text must be a string.")
    if kind == "inlineData":
        if not isinstance(value, dict) or not value.get("mimeType") or not isinstance(value.get("data"), str):
            raise Invalid(f"{where}.inlineData needs mimeType and data.")
        try:
            base64.b64decode(value["data"], validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"{where}.inlineData.data is not base64.") from None
    if kind == "fileData" and (
        not isinstance(value, dict) or not value.get("fileUri") or (vertex and not value.get("mimeType"))
    ):
        raise Invalid(f"{where}.fileData needs fileUri and mimeType.")
    if kind == "functionCall" and (
        not isinstance(value, dict) or not value.get("name") or not isinstance(value.get("args", {}), dict)
    ):
        raise Invalid(f"{where}.functionCall needs a name and object args.")
    if kind == "functionResponse" and (
        not isinstance(value, dict) or not value.get("name") or not isinstance(value.get("response"), dict)
    ):
        raise Invalid(f"{where}.functionResponse needs a name and an object response.")


def _check_contents(contents: Any, vertex: bool) -> None:
    if not isinstance(contents, list) or not contents:
        raise Invalid("contents is not specified")
    previous: dict[str, Any] | None = None
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict) or set(content) - {"role", "parts"}:
            raise Invalid(f"{where} must be an object with role and parts.")
        if content.get("role") not in {"user", "model"}:
            raise Invalid(f"Please use a valid role: user, model (at {where}).")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Invalid(f"{where}.parts must not be empty.")
        for number, part in enumerate(parts):
            _check_part(part, f"{where}.parts[{number}]", vertex)
        calls = [part for part in parts if "functionCall" in part]
        if calls and not _signature_valid(calls[0].get("thoughtSignature"), calls[0]["functionCall"]["name"]):
            raise Invalid(f"Function call is missing a thought_signature in functionCall parts ({where}).")
        responses = [part for part in parts if "functionResponse" in part]
        if responses:
            asked = [part for part in (previous or {}).get("parts", []) if "functionCall" in part]
            if not asked or len(asked) != len(responses) or content["role"] != "user":
                raise Invalid(
                    "Please ensure that the number of function response parts is equal to the number of function"
                    " call parts of the function call turn."
                )
        previous = content


def _lowercase_types(schema: Any) -> Any:
    """Google's OpenAPI-style schema (type "OBJECT") in the JSON Schema spelling the rules read."""
    if isinstance(schema, dict):
        return {
            key: (value.lower() if key == "type" and isinstance(value, str) else _lowercase_types(value))
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_lowercase_types(item) for item in schema]
    return schema


def _declarations(body: dict[str, Any]) -> dict[str, Any]:
    """name -> parameter schema of the function declarations offered."""
    declared: dict[str, Any] = {}
    tools = body.get("tools", [])
    if not isinstance(tools, list):
        raise Invalid("tools must be a list.")
    for tool in tools:
        if not isinstance(tool, dict) or set(tool) - {"functionDeclarations"}:
            raise Invalid("Only functionDeclarations tools are simulated.")
        for declaration in tool.get("functionDeclarations") or []:
            if not isinstance(declaration, dict) or not declaration.get("name"):
                raise Invalid("A function declaration needs a name.")
            unknown = set(declaration) - {"name", "description", "parameters", "parametersJsonSchema"}
            if unknown:
                raise Invalid(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}".')
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                raise Invalid("parameters and parametersJsonSchema are mutually exclusive.")
            if "parametersJsonSchema" in declaration:
                declared[declaration["name"]] = declaration["parametersJsonSchema"]
            else:
                declared[declaration["name"]] = _lowercase_types(declaration.get("parameters"))
    return declared


def _calling_config(body: dict[str, Any], declared: dict[str, Any]) -> tuple[str, list[str]]:
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = config.get("mode", "AUTO")
    allowed = config.get("allowedFunctionNames") or []
    if mode not in {"AUTO", "ANY", "NONE", "VALIDATED"}:
        raise Invalid(f"Invalid functionCallingConfig.mode {mode!r}.")
    if allowed and mode not in {"ANY", "VALIDATED"}:
        raise Invalid("allowedFunctionNames may only be set with mode ANY.")
    for name in allowed:
        if name not in declared:
            raise Invalid(f"allowedFunctionNames names an undeclared function {name!r}.")
    return mode, allowed


def _check_generation(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise Invalid("generationConfig must be an object.")
    unknown = set(config) - GENERATION_FIELDS
    if unknown:
        raise Invalid(f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'generation_config'.")
    if "responseSchema" in config and "responseJsonSchema" in config:
        raise Invalid("responseSchema and responseJsonSchema are mutually exclusive.")
    if ("responseSchema" in config or "responseJsonSchema" in config) and config.get(
        "responseMimeType"
    ) != "application/json":
        raise Invalid("A response schema needs responseMimeType application/json.")
    count = config.get("candidateCount", 1)
    if not isinstance(count, int) or not 1 <= count <= 8:
        raise Invalid("candidateCount must be from 1 to 8.")
    if "logprobs" in config and not config.get("responseLogprobs"):
        raise Invalid("logprobs needs responseLogprobs.")
    return config


def _content_text(content: dict[str, Any]) -> str:
    texts = []
    for part in content.get("parts", []):
        if "text" in part:
            texts.append(part["text"])
        elif "functionCall" in part:
            texts.append(json.dumps(part["functionCall"].get("args", {})))
        elif "functionResponse" in part:
            texts.append(json.dumps(part["functionResponse"]["response"]))
    return " ".join(texts)


def _media_parts(content: dict[str, Any]) -> int:
    return sum(1 for part in content.get("parts", []) if "inlineData" in part or "fileData" in part)


def prompt_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a generateContent request, by the rules in the module docstring."""
    total = sum(
        4 + count_tokens(_content_text(content)) + IMAGE_TOKENS * _media_parts(content) for content in body["contents"]
    )
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        total += count_tokens(_content_text(system))
    if body.get("tools"):
        total += count_tokens(json.dumps(body["tools"]))
    return total


# Answers ----------------------------------------------------------------------------------------


class Answer:
    """One candidate's answer, made once and copied candidateCount times."""

    def __init__(self, body: dict[str, Any], behaviour: ModelBehaviour):
        declared = _declarations(body)
        mode, allowed = _calling_config(body, declared)
        config = _check_generation(body.get("generationConfig", {}))
        contents = body["contents"]
        after_tool_result = any("functionResponse" in part for part in contents[-1]["parts"])
        self.words = completion_words(answer_size(config.get("maxOutputTokens"), behaviour))
        self.call: dict[str, Any] | None = None
        self.text = ""
        if declared and mode != "NONE" and not after_tool_result:
            name = allowed[0] if allowed else next(iter(declared))
            self.call = {"name": name, "args": example_from_schema(declared[name])}
            self.output_tokens = count_tokens(json.dumps(self.call["args"]))
        elif config.get("responseMimeType") == "application/json":
            schema = config.get("responseJsonSchema")
            if schema is None and "responseSchema" in config:
                schema = _lowercase_types(config["responseSchema"])
            self.text = json_answer(schema, self.words)
            self.output_tokens = count_tokens(self.text)
        else:
            self.text = " ".join(self.words)
            self.output_tokens = len(self.words)
        self.candidates = config.get("candidateCount", 1)
        self.logprobs = bool(config.get("responseLogprobs")) and self.call is None
        self.top_logprobs = config.get("logprobs", 0)

    def logprobs_result(self, pieces: list[str]) -> dict[str, Any]:
        chosen = [{"token": piece, "logProbability": 0.0} for piece in pieces]
        result: dict[str, Any] = {"chosenCandidates": chosen}
        if self.top_logprobs:
            result["topCandidates"] = [
                {"candidates": [{"token": piece, "logProbability": 0.0}][: self.top_logprobs]} for piece in pieces
            ]
        return result

    def parts(self) -> list[dict[str, Any]]:
        if self.call is not None:
            return [{"functionCall": self.call, "thoughtSignature": signature_for(self.call["name"])}]
        return [{"text": self.text}]


def _usage_metadata(prompt: int, completion: int) -> dict[str, int]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion}


def _candidate(index: int, parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
    if finish:
        candidate["finishReason"] = finish
    return candidate


def _sse(document: dict[str, Any]) -> str:
    return f"data: {json.dumps(document)}\r\n\r\n"


def generate(body: dict[str, Any], model: str, behaviour: ModelBehaviour, stream: bool, sse: bool) -> Response:
    answer = Answer(body, behaviour)
    prompt = prompt_tokens(body)
    completion = answer.output_tokens * answer.candidates
    response_id = uuid.uuid4().hex[:24]
    if not stream:
        candidates = []
        for index in range(answer.candidates):
            candidate = _candidate(index, answer.parts(), "STOP")
            if answer.logprobs:
                candidate["logprobsResult"] = answer.logprobs_result(_pieces(answer.text, answer.words))
            candidates.append(candidate)
        return JSONResponse(
            {
                "candidates": candidates,
                "usageMetadata": _usage_metadata(prompt, completion),
                "modelVersion": model,
                "responseId": response_id,
            }
        )

    def events() -> list[tuple[list[dict[str, Any]], str | None, int]]:
        """(parts, finish reason, output tokens so far per candidate) for each event."""
        if answer.call is not None or answer.text != " ".join(answer.words):
            return [(answer.parts(), "STOP", answer.output_tokens)]
        pieces = _pieces(answer.text, answer.words)
        return [
            ([{"text": piece}], "STOP" if number == len(pieces) - 1 else None, number + 1)
            for number, piece in enumerate(pieces)
        ]

    planned = events()

    def document(parts: list[dict[str, Any]], finish: str | None, produced: int) -> dict[str, Any]:
        candidates = []
        for index in range(answer.candidates):
            candidate = _candidate(index, parts, finish)
            if answer.logprobs and "text" in parts[0]:
                candidate["logprobsResult"] = answer.logprobs_result([parts[0]["text"]])
            candidates.append(candidate)
        return {
            "candidates": candidates,
            "usageMetadata": _usage_metadata(prompt, produced * answer.candidates),
            "modelVersion": model,
            "responseId": response_id,
        }

    if not sse:  # without alt=sse Google streams one JSON array
        return JSONResponse([document(*event) for event in planned])

    async def stream_events() -> AsyncIterator[str]:
        for event in planned:
            if behaviour.tokens_per_second:
                await asyncio.sleep(1 / behaviour.tokens_per_second)
            yield _sse(document(*event))

    return StreamingResponse(stream_events(), media_type="text/event-stream")


def _pieces(text: str, words: list[str]) -> list[str]:
    """The text as its words, each after the first with its leading space; JSON whole."""
    if text != " ".join(words) or not words:
        return [text]
    return [word if number == 0 else " " + word for number, word in enumerate(words)]


# Routes ---------------------------------------------------------------------------------------


def routes(ctx: SimContext) -> list[Route]:
    issued: dict[str, float] = {}  # access token -> expiry (Unix seconds)

    async def read_body(request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return google_error(400, "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return google_error(400, "Invalid JSON payload received: expected an object.")
        return body

    async def admitted(request: Request, model: str, vertex: bool) -> Response | None:
        """The faults of the shared machinery, then (Vertex AI) the OAuth token."""
        fault = await ctx.apply_faults(request, model)
        if fault is not None:
            return google_fault(fault)
        if vertex:
            header = request.headers.get("authorization", "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if issued.get(token, 0) <= time.time():
                return google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie"
                    " or other valid authentication credential.",
                )
        return None

    async def model_call(request: Request, model: str, method: str, vertex: bool) -> Response:
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        refused = await admitted(request, model, vertex)
        if refused is not None:
            return refused
        behaviour = ctx.state.behaviour(model)
        try:
            if method in {"generateContent", "streamGenerateContent"}:
                unknown = set(body) - REQUEST_FIELDS
                if unknown:
                    raise Invalid(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}".')
                _check_contents(body.get("contents"), vertex)
                system = body.get("systemInstruction")
                if system is not None and (not isinstance(system, dict) or not isinstance(system.get("parts"), list)):
                    raise Invalid("systemInstruction must be a content with parts.")
                stream = method == "streamGenerateContent"
                return generate(body, model, behaviour, stream, request.query_params.get("alt") == "sse")
            if method == "batchEmbedContents" and not vertex:
                return JSONResponse({"embeddings": [_embed(item, model) for item in _batch(body)]})
            if method == "embedContent" and not vertex:
                return JSONResponse({"embedding": _embed(body, model)})
            if method == "predict" and vertex:
                return JSONResponse(_predict(body))
        except Invalid as error:
            return google_error(400, str(error))
        return google_error(404, f"Method {method} is not found for model {model}.")

    async def gemini_model(request: Request) -> Response:
        model, _, method = request.path_params["target"].partition(":")
        return await model_call(request, model, method, vertex=False)

    async def vertex_model(request: Request) -> Response:
        model, _, method = request.path_params["target"].partition(":")
        return await model_call(request, model, method, vertex=True)

    async def list_models(request: Request) -> Response:
        refused = await admitted(request, "models", vertex=False)
        if refused is not None:
            return refused
        return JSONResponse(
            {
                "models": [
                    {"name": f"models/{name}", "displayName": name, "supportedGenerationMethods": methods}
                    for name, methods in GEMINI_MODELS.items()
                ]
            }
        )

    async def list_vertex_models(request: Request) -> Response:
        refused = await admitted(request, "models", vertex=True)
        if refused is not None:
            return refused
        return JSONResponse({})  # the project's own uploaded models: none (Google leaves out an empty list)

    async def token(request: Request) -> Response:
        ctx.state.stats["google-token"] += 1
        form = parse_qs((await request.body()).decode(errors="replace"))
        grant = form.get("grant_type", [""])[0]
        if grant != JWT_BEARER_GRANT:
            return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant[:60]}")
        claims = _jwt_claims(form.get("assertion", [""])[0])
        if claims is None:
            return _oauth_error("invalid_grant", "Invalid JWT: malformed.")
        now = time.time()
        url = str(request.url).split("?")[0]
        problem = (
            "Invalid JWT: audience is not the token URL."
            if claims.get("aud") != url
            else "Invalid JWT: token must be a short-lived token and in a reasonable timeframe."
            if not _lifetime_ok(claims, now)
            else "Invalid OAuth scope."
            if CLOUD_PLATFORM_SCOPE not in str(claims.get("scope", "")).split()
            else "Invalid JWT Signature."
            if not isinstance(claims.get("iss"), str) or claims["iss"] in ctx.state.rejected_keys
            else ""
        )
        if problem:
            return _oauth_error("invalid_scope" if "scope" in problem else "invalid_grant", problem)
        access_token = "ya29.sim-" + uuid.uuid4().hex
        issued[access_token] = now + TOKEN_LIFETIME
        return JSONResponse({"access_token": access_token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"})

    return [
        Route("/v1beta/models", list_models, methods=["GET"]),
        Route("/v1beta/models/{target:path}", gemini_model, methods=["POST"]),
        Route("/v1/projects/{project}/locations/{location}/models", list_vertex_models, methods=["GET"]),
        Route(
            "/v1/projects/{project}/locations/{location}/publishers/google/models/{target:path}",
            vertex_model,
            methods=["POST"],
        ),
        Route("/_sim/google/token", token, methods=["POST"]),
    ]


def _batch(body: dict[str, Any]) -> list[dict[str, Any]]:
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests or set(body) - {"requests"}:
        raise Invalid("requests must be a non-empty list.")
    return requests


def _embed(request: Any, model: str) -> dict[str, Any]:
    if not isinstance(request, dict) or set(request) - {"model", "content", "outputDimensionality", "taskType"}:
        raise Invalid("An embedding request holds model, content and outputDimensionality.")
    if "model" in request and request["model"] != f"models/{model}":
        raise Invalid(f"Model {request['model']!r} does not match the model of the URL.")
    content = request.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise Invalid("content must hold parts.")
    text = " ".join(str(part.get("text", "")) for part in content["parts"] if isinstance(part, dict))
    return {"values": embedding_vector(text, _dimensions(request.get("outputDimensionality")))}


def _dimensions(value: Any) -> int:
    if value is None:
        return EMBEDDING_DIMENSIONS
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Invalid("outputDimensionality must be a positive whole number.")
    return value


def _predict(body: dict[str, Any]) -> dict[str, Any]:
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances or set(body) - {"instances", "parameters"}:
        raise Invalid("instances must be a non-empty list.")
    dimensions = _dimensions((body.get("parameters") or {}).get("outputDimensionality"))
    predictions = []
    for instance in instances:
        if not isinstance(instance, dict) or not isinstance(instance.get("content"), str):
            raise Invalid("Each instance needs a content string.")
        text = instance["content"]
        predictions.append(
            {
                "embeddings": {
                    "values": embedding_vector(text, dimensions),
                    "statistics": {"token_count": count_tokens(text), "truncated": False},
                }
            }
        )
    billable = sum(len(instance["content"]) for instance in instances)
    return {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _jwt_claims(assertion: str) -> dict[str, Any] | None:
    """The claims of an RS256 JWT of the right shape, or None."""
    segments = assertion.split(".")
    if len(segments) != 3:
        return None
    try:
        header, claims = _b64url_json(segments[0]), _b64url_json(segments[1])
        signature = base64.urlsafe_b64decode(segments[2] + "=" * (-len(segments[2]) % 4))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
        return None
    return claims if len(signature) >= 128 else None


def _lifetime_ok(claims: dict[str, Any], now: float) -> bool:
    issued_at, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued_at, int) or not isinstance(expires, int):
        return False
    return expires > now and issued_at < expires <= issued_at + 3600

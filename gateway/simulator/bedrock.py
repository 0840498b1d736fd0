"""The AWS wire formats of the simulator: Bedrock Converse, ConverseStream (binary AWS
event-stream frames), Amazon Titan text embeddings (InvokeModel) and STS AssumeRole.

Answers follow gateway/simulator/behaviour.py. Bedrock has no JSON mode and no `n`: JSON is
asked for with a forced tool, which the tool rule answers.

Every request must be SigV4 signed. `POST /_sim/aws/keys` ({"<access key id>": "<secret>", ...};
a null secret forgets the key) tells the simulator secrets: a request signed with a known key
is verified in full (canonical request, body hash, date, session token), as AWS would, and a
wrong signature is answered 403. A key it does not know is let through once the Authorization
header's shape, service, region scope and date are right. Keys issued by AssumeRole are known
(with their session token) until they expire.

Faults (gateway/simulator/app.py `apply_faults`) are answered in AWS's shapes: JSON with an
`x-amzn-ErrorType` header from Bedrock (ThrottlingException for 429), XML from STS. A key
listed in `rejected_keys` is an access key id here.
"""

import asyncio
import base64
import binascii
import hmac
import json
import re
import secrets
import string
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
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
)

AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Za-z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
    r"(?P<service>[a-z0-9-]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;._-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
AWS_HOST = re.compile(r"(?:bedrock-runtime|sts)(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?::\d+)?")
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,64}")
SIGNATURE_WINDOW = timedelta(minutes=5)
IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}
ERROR_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}
THROTTLED = "Too many requests, please wait before trying again."
BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
PADDING = string.ascii_letters + string.digits


@dataclass(frozen=True)
class KnownKey:
    secret: str
    session_token: str = ""
    expires_at: datetime | None = None


# The event-stream encoding ---------------------------------------------------------------------


def _string_header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    return struct.pack("B", len(name_bytes)) + name_bytes + b"\x07" + struct.pack(">H", len(value_bytes)) + value_bytes


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total length, headers length, CRC32), string
    headers, payload and the CRC32 of everything before it."""
    header_bytes = b"".join(_string_header(name, value) for name, value in headers.items())
    total = 12 + len(header_bytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(header_bytes))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + header_bytes + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads each payload with a field "p" of varying length, so sizes say nothing.
    padded = {**payload, "p": PADDING[: 1 + len(event_type) * 2 % len(PADDING)]}
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_frame(headers, json.dumps(padded).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_frame(headers, json.dumps({"message": message}).encode())


# AWS-shaped errors -----------------------------------------------------------------------------


def aws_error(status: int, message: str, error_type: str = "", headers: dict[str, str] | None = None) -> Response:
    kind = error_type or ERROR_TYPES.get(status, "InternalServerException")
    return JSONResponse(
        {"message": message},
        status_code=status,
        headers={**(headers or {}), "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )


def sts_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    document = (
        f'<ErrorResponse xmlns="{STS_NAMESPACE}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{_xml_escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return Response(document, status_code=status, media_type="text/xml", headers=headers)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fault_as_aws(fault: Response, sts: bool) -> Response:
    """A fault from app.py's apply_faults (OpenAI's error shape) in AWS's shape."""
    try:
        message = str(json.loads(bytes(fault.body))["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = "Simulated upstream failure."
    headers = {"retry-after": fault.headers["retry-after"]} if "retry-after" in fault.headers else {}
    status = fault.status_code
    if status == 401:  # AWS answers a key it does not accept with 403
        message = "The security token included in the request is invalid."
        if sts:
            return sts_error(403, "InvalidClientTokenId", message, headers)
        return aws_error(403, message, "UnrecognizedClientException", headers)
    if status == 429:
        message = THROTTLED
    if sts:
        return sts_error(status, "Throttling" if status == 429 else "InternalFailure", message, headers)
    return aws_error(status, message, headers=headers)


# Signature checks ------------------------------------------------------------------------------


def _signed_url(request: Request) -> str:
    """The URL as the client wrote it (still percent-encoded), which is what it signed."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    query = request.url.query
    return f"{request.url.scheme}://{request.headers.get('host', '')}{path}" + (f"?{query}" if query else "")


def signature_problem(request: Request, body: bytes, service: str, known: dict[str, KnownKey]) -> str:
    """Why AWS would refuse this request's SigV4 signature, or ""."""
    found = AUTHORIZATION.fullmatch(request.headers.get("authorization", "").strip())
    if found is None:
        return "Authorization header requires Credential, SignedHeaders and Signature (AWS4-HMAC-SHA256)."
    if found["service"] != service:
        return f"Credential should be scoped to correct service: '{service}'."
    region = found["region"]
    host = AWS_HOST.fullmatch(request.headers.get("host", ""))
    if not REGION.fullmatch(region) or (host is not None and host["region"] != region):
        return f"Credential should be scoped to a valid region, not '{region}'."
    signed = found["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return "The host and x-amz-date headers must be signed."
    token = request.headers.get("x-amz-security-token", "")
    if token and "x-amz-security-token" not in signed:
        return "The x-amz-security-token header must be signed."
    amz_date = request.headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "The x-amz-date header is missing or not a date like 20240101T000000Z."
    if amz_date[:8] != found["date"]:
        return "The credential's date is not the x-amz-date's date."
    if abs(datetime.now(UTC) - when) > SIGNATURE_WINDOW:
        return "Signature expired: the x-amz-date is more than 5 minutes away from now."
    key = known.get(found["key"])
    if key is None:
        return ""
    if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
        return "The security token included in the request is expired."
    if key.session_token and not hmac.compare_digest(token, key.session_token):
        return "The security token included in the request is invalid."
    signed_request = AWSRequest(
        method=request.method,
        url=_signed_url(request),
        data=body,
        headers={name: request.headers.get(name, "") for name in signed},
    )
    signed_request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(found["key"], key.secret, key.session_token or None), service, region)
    expected = signer.signature(
        signer.string_to_sign(signed_request, signer.canonical_request(signed_request)), signed_request
    )
    return "" if hmac.compare_digest(str(expected), found["signature"]) else BAD_SIGNATURE


def _access_key_id(request: Request) -> str:
    """The access key id of a SigV4 Authorization header; a placeholder if it is malformed, so
    the faults let it through to the signature check."""
    header = request.headers.get("authorization", "")
    found = re.match(r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/", header)
    if found is not None:
        return found[1]
    return "malformed-aws-signature" if header.startswith("AWS4-HMAC-SHA256") else ""


# Conversation rules ----------------------------------------------------------------------------


def _block_texts(block: dict[str, Any]) -> list[str]:
    if isinstance(block.get("text"), str):
        return [block["text"]]
    result = block.get("toolResult")
    if isinstance(result, dict):
        return [part["text"] for part in result.get("content") or [] if isinstance(part, dict) and "text" in part]
    return []


def validation_problem(body: dict[str, Any]) -> str:
    """What Bedrock's ValidationException would say about a Converse body, or ""."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "The messages field is required and must not be empty."
    tool_config = body.get("toolConfig")
    tools = tool_config.get("tools") if isinstance(tool_config, dict) else None
    if tool_config is not None and (not isinstance(tools, list) or not tools):
        return "The toolConfig field must hold at least one tool."
    names = set()
    for tool in tools or []:
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        schema = spec.get("inputSchema") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not spec.get("name") or not isinstance(schema, dict):
            return "Each tool needs a toolSpec with a name and an inputSchema."
        if not isinstance(schema.get("json"), dict) or ("description" in spec and not spec["description"]):
            return "A toolSpec's inputSchema.json must be an object and its description not blank."
        names.add(spec["name"])
    choice = tool_config.get("toolChoice") if isinstance(tool_config, dict) else None
    if isinstance(choice, dict) and "tool" in choice and choice["tool"].get("name") not in names:
        return "The toolChoice names a tool that is not in toolConfig.tools."
    for position, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{position}.role must be user or assistant."
        if role != ("user" if position % 2 == 0 else "assistant"):
            return "A conversation must start with a user message and alternate between user and assistant roles."
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"messages.{position}.content must be a non-empty list."
        for index, block in enumerate(content):
            where = f"messages.{position}.content.{index}"
            if not isinstance(block, dict) or len(block) != 1:
                return f"The ContentBlock object at {where} must hold exactly one member."
            if "text" in block and not str(block["text"]).strip():
                return f"The text field in the ContentBlock object at {where} is blank. Add text and try again."
            if ("toolUse" in block or "toolResult" in block) and not tools:
                return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
            if "toolUse" in block and role != "assistant":
                return f"{where}: a toolUse block belongs to an assistant message."
            if "toolResult" in block and role != "user":
                return f"{where}: a toolResult block belongs to a user message."
            if "image" in block:
                image = block["image"]
                source = image.get("source") if isinstance(image, dict) else None
                if not isinstance(source, dict) or image.get("format") not in IMAGE_FORMATS:
                    return f"{where}: an image needs a format (png, jpeg, gif, webp) and a source."
                try:
                    base64.b64decode(str(source.get("bytes") or ""), validate=True)
                except binascii.Error:
                    return f"{where}: the image bytes are not base64."
    config = body.get("inferenceConfig") or {}
    limit = config.get("maxTokens") if isinstance(config, dict) else None
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        return "inferenceConfig.maxTokens must be a positive integer."
    return ""


def input_tokens_of(body: dict[str, Any]) -> int:
    """4 per message + its text + IMAGE_TOKENS per image, + the system text, + the tools' JSON."""
    total = 0
    for message in body.get("messages") or []:
        blocks = [block for block in message.get("content") or [] if isinstance(block, dict)]
        text = " ".join(text for block in blocks for text in _block_texts(block))
        total += 4 + count_tokens(text) + IMAGE_TOKENS * sum(1 for block in blocks if "image" in block)
    system = " ".join(block.get("text", "") for block in body.get("system") or [] if isinstance(block, dict))
    if system:
        total += count_tokens(system)
    tool_config = body.get("toolConfig")
    if isinstance(tool_config, dict) and tool_config.get("tools"):
        total += count_tokens(json.dumps(tool_config["tools"]))
    return total


@dataclass
class Answer:
    words: list[str]
    tool: tuple[str, Any] | None  # (name, input) of a tool call
    stop_reason: str
    input_tokens: int

    @property
    def output_tokens(self) -> int:
        return count_tokens(json.dumps(self.tool[1])) if self.tool is not None else len(self.words)


def plan_answer(body: dict[str, Any], behaviour: ModelBehaviour) -> Answer:
    """The behaviour rules: a tool call when tools are offered and the last turn holds no tool
    result (the forced tool, else the first); a text answer otherwise."""
    input_tokens = input_tokens_of(body)
    tool_config = body.get("toolConfig") or {}
    tools = [tool["toolSpec"] for tool in tool_config.get("tools") or []]
    last = body["messages"][-1].get("content") or []
    after_result = any(isinstance(block, dict) and "toolResult" in block for block in last)
    if tools and not after_result:
        choice = tool_config.get("toolChoice") or {}
        forced = choice.get("tool", {}).get("name") if isinstance(choice, dict) else None
        spec = next((tool for tool in tools if tool["name"] == forced), tools[0])
        return Answer([], (spec["name"], example_from_schema(spec["inputSchema"]["json"])), "tool_use", input_tokens)
    limit = (body.get("inferenceConfig") or {}).get("maxTokens")
    size = answer_size(limit, behaviour)
    stop = "max_tokens" if size < behaviour.completion_tokens else "end_turn"
    return Answer(completion_words(size), None, stop, input_tokens)


# Routes ----------------------------------------------------------------------------------------


def routes(ctx: SimContext) -> list[Route]:
    known: dict[str, KnownKey] = {}

    def with_key(request: Request) -> Request:
        """The request as apply_faults should see it: it reads the key from Bearer or x-api-key,
        so a SigV4 request's access key id is given to it as x-api-key."""
        if ctx.api_key(request):
            return request
        key = _access_key_id(request)
        if not key:
            return request
        scope = dict(request.scope)
        scope["headers"] = [*request.scope["headers"], (b"x-api-key", key.encode())]
        return Request(scope, request.receive)

    async def admitted(request: Request, body: bytes, model: str, service: str) -> Response | None:
        fault = await ctx.apply_faults(with_key(request), model)
        if fault is not None:
            return _fault_as_aws(fault, sts=service == "sts")
        if sum(1 for name, _ in request.scope["headers"] if name.lower() == b"host") > 1:
            # A client that adds its own Host to the signed one; AWS refuses such a request.
            if service == "sts":
                return sts_error(400, "InvalidRequest", "The request has more than one Host header.")
            return aws_error(400, "The request has more than one Host header.")
        problem = signature_problem(request, body, service, known)
        if not problem:
            return None
        if service == "sts":
            return sts_error(403, "SignatureDoesNotMatch", problem)
        kind = "InvalidSignatureException" if problem == BAD_SIGNATURE else "UnrecognizedClientException"
        return aws_error(403, problem, kind)

    async def converse_body(request: Request) -> tuple[str, dict[str, Any]] | Response:
        model = request.path_params["model_id"]
        raw = await request.body()
        refusal = await admitted(request, raw, model, "bedrock")
        if refusal is not None:
            return refusal
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return aws_error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return aws_error(400, "The request body must be a JSON object.")
        problem = validation_problem(body)
        if problem:
            return aws_error(400, problem)
        return model, body

    async def converse(request: Request) -> Response:
        found = await converse_body(request)
        if isinstance(found, Response):
            return found
        model, body = found
        answer = plan_answer(body, ctx.state.behaviour(model))
        if answer.tool is not None:
            name, arguments = answer.tool
            content: list[dict[str, Any]] = [
                {"toolUse": {"toolUseId": "tooluse_" + uuid.uuid4().hex[:22], "name": name, "input": arguments}}
            ]
        else:
            content = [{"text": " ".join(answer.words)}]
        return JSONResponse(
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": answer.stop_reason,
                "usage": {
                    "inputTokens": answer.input_tokens,
                    "outputTokens": answer.output_tokens,
                    "totalTokens": answer.input_tokens + answer.output_tokens,
                },
                "metrics": {"latencyMs": 1},
            },
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    async def converse_stream(request: Request) -> Response:
        found = await converse_body(request)
        if isinstance(found, Response):
            return found
        model, body = found
        behaviour = ctx.state.behaviour(model)
        answer = plan_answer(body, behaviour)

        async def frames() -> AsyncIterator[bytes]:
            yield event_frame("messageStart", {"role": "assistant"})
            if answer.tool is not None:
                name, arguments = answer.tool
                tool_use = {"toolUseId": "tooluse_" + uuid.uuid4().hex[:22], "name": name}
                yield event_frame("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": tool_use}})
                text = json.dumps(arguments)
                for offset in range(0, len(text), 7):  # partial JSON, as models stream it
                    piece = {"toolUse": {"input": text[offset : offset + 7]}}
                    yield event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": piece})
            else:
                for i, word in enumerate(answer.words):
                    if behaviour.tokens_per_second:
                        await asyncio.sleep(1 / behaviour.tokens_per_second)
                    delta = {"text": word if i == 0 else " " + word}
                    yield event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta})
            yield event_frame("contentBlockStop", {"contentBlockIndex": 0})
            yield event_frame("messageStop", {"stopReason": answer.stop_reason})
            usage = {
                "inputTokens": answer.input_tokens,
                "outputTokens": answer.output_tokens,
                "totalTokens": answer.input_tokens + answer.output_tokens,
            }
            yield event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 1}})

        return StreamingResponse(
            frames(), media_type="application/vnd.amazon.eventstream", headers={"x-amzn-RequestId": str(uuid.uuid4())}
        )

    async def invoke(request: Request) -> Response:
        """Amazon Titan text embeddings: {"inputText", "dimensions", "normalize"}."""
        model = request.path_params["model_id"]
        raw = await request.body()
        refusal = await admitted(request, raw, model, "bedrock")
        if refusal is not None:
            return refusal
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return aws_error(400, "The request body is not valid JSON.")
        text = body.get("inputText") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            return aws_error(400, "Malformed input request: required key [inputText] not found or blank.")
        extra = set(body) - {"inputText", "dimensions", "normalize", "embeddingTypes"}
        if extra:
            return aws_error(400, f"Malformed input request: extraneous key [{sorted(extra)[0]}] is not permitted.")
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 8192:
            return aws_error(400, "Malformed input request: dimensions must be a positive integer.")
        return JSONResponse(
            {"embedding": embedding_vector(text, dimensions), "inputTextTokenCount": count_tokens(text)},
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    async def list_async_invokes(request: Request) -> Response:
        """ListAsyncInvokes: the cheap signed read the portal's "Test connection" makes."""
        refusal = await admitted(request, b"", "async-invoke", "bedrock")
        if refusal is not None:
            return refusal
        return JSONResponse({"asyncInvokeSummaries": []})

    async def assume_role(request: Request) -> Response:
        """STS AssumeRole (the Query API, form-encoded)."""
        raw = await request.body()
        refusal = await admitted(request, raw, "sts", "sts")
        if refusal is not None:
            return refusal
        form = {name: values[0] for name, values in parse_qs(raw.decode("utf-8", "replace")).items()}
        if form.get("Action") != "AssumeRole" or form.get("Version") != "2011-06-15":
            return sts_error(400, "InvalidAction", "Only AssumeRole (Version 2011-06-15) is simulated.")
        role_arn, session = form.get("RoleArn", ""), form.get("RoleSessionName", "")
        if not ROLE_ARN.fullmatch(role_arn) or not re.fullmatch(r"[\w+=,.@-]{2,64}", session):
            return sts_error(400, "ValidationError", "RoleArn or RoleSessionName is not valid.")
        try:
            seconds = int(form.get("DurationSeconds", "3600"))
        except ValueError:
            seconds = 0
        if not 900 <= seconds <= 43200:
            return sts_error(400, "ValidationError", "DurationSeconds must be between 900 and 43200.")
        access_key_id = "ASIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        issued = KnownKey(
            secret=secrets.token_urlsafe(30),
            session_token=secrets.token_urlsafe(96),
            expires_at=datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds),
        )
        known[access_key_id] = issued
        ctx.state.stats["sts:AssumeRole"] += 1
        expiration = (issued.expires_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        role_name = role_arn.rsplit("/", 1)[-1]
        account = role_arn.split(":")[4]
        document = (
            f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}"><AssumeRoleResult>'
            f"<AssumedRoleUser><Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn>"
            f"<AssumedRoleId>AROA{access_key_id[4:]}:{session}</AssumedRoleId></AssumedRoleUser>"
            f"<Credentials><AccessKeyId>{access_key_id}</AccessKeyId>"
            f"<SecretAccessKey>{issued.secret}</SecretAccessKey>"
            f"<SessionToken>{issued.session_token}</SessionToken>"
            f"<Expiration>{expiration}</Expiration></Credentials>"
            f"</AssumeRoleResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            f"</AssumeRoleResponse>"
        )
        return Response(document, media_type="text/xml")

    async def set_keys(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not all(isinstance(v, str | None) for v in body.values()):
            return JSONResponse({"error": 'Send {"<access key id>": "<secret>" or null}.'}, status_code=400)
        for access_key_id, secret in body.items():
            if secret is None:
                known.pop(access_key_id, None)
            else:
                known[access_key_id] = KnownKey(secret)
        return JSONResponse({"known": sorted(known)})

    return [
        Route("/model/{model_id:path}/converse", converse, methods=["POST"]),
        Route("/model/{model_id:path}/converse-stream", converse_stream, methods=["POST"]),
        Route("/model/{model_id:path}/invoke", invoke, methods=["POST"]),
        Route("/async-invoke", list_async_invokes, methods=["GET"]),
        Route("/", assume_role, methods=["POST"]),
        Route("/_sim/aws/keys", set_keys, methods=["POST"]),
    ]

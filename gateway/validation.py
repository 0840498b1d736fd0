"""What a request may contain, checked at the edge before anything reaches Redis, the usage
stream, the ledger or a provider. A caller can be hostile: every string that is stored is
bounded and free of control characters and lone surrogates, and JSON nesting is bounded.
"""

import re
from typing import Any

import orjson

from .errors import invalid_request

MAX_JSON_DEPTH = 64  # tool schemas nest a few levels; orjson itself refuses past 1,024
MAX_MODEL_LENGTH = 200  # the ledger's alias column
MAX_REQUEST_ID_LENGTH = 64  # the ledger's request_id column
MAX_TOKENS_CEILING = 1_000_000
MAX_CHOICES = 8
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# C0 controls (NUL among them), DEL, and UTF-16 surrogates, which no valid UTF-8 text holds.
UNSTORABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
REQUEST_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_REQUEST_ID_LENGTH}}}")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 for anything else."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise invalid_request(f"The request body is not valid JSON ({_reason(error)}).") from None
    if not isinstance(document, dict):
        raise invalid_request("The request body must be a JSON object.")
    # A document can only nest as deep as it has brackets: most bodies need no walk at all.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth_exceeds(document, MAX_JSON_DEPTH):
        raise invalid_request(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    return document


# Top-level keys the gateway checks or prices. Were one of them in a body twice, orjson keeps
# the last and a provider might keep the first: such a body is re-serialised, never forwarded.
CHECKED_KEYS = tuple(
    b'"%s"' % name
    for name in (b"model", b"messages", b"input", b"max_tokens", b"max_completion_tokens", b"n", b"stream")
)


def forwardable(raw: bytes) -> bool:
    """Whether a parsed body may go to the provider byte for byte: no checked key written twice
    (and no \\u escapes, which could spell a key name another way)."""
    return b"\\u" not in raw and all(raw.count(name) <= 1 for name in CHECKED_KEYS)


def _reason(error: orjson.JSONDecodeError) -> str:
    return str(error).split(":", 1)[0][:100]


def _depth_exceeds(document: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values() if isinstance(item, dict | list))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))
    return False


def storable_text(value: object, field: str, max_length: int) -> str:
    """A non-empty string that can be stored anywhere; 400 naming the field otherwise."""
    if not isinstance(value, str) or not value:
        raise invalid_request(f"'{field}' must be a non-empty string.")
    if len(value) > max_length:
        raise invalid_request(f"'{field}' must be at most {max_length} characters.")
    if UNSTORABLE.search(value):
        raise invalid_request(f"'{field}' must not contain control characters or lone surrogates.")
    return value


def request_id(header: str) -> str:
    """The caller's X-Request-Id: letters, digits and . _ : - only, so it is safe in logs and the ledger."""
    if not REQUEST_ID.fullmatch(header):
        raise invalid_request(
            f"The X-Request-Id header must be 1 to {MAX_REQUEST_ID_LENGTH} letters, digits or . _ : - characters."
        )
    return header


def validate_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty list.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise invalid_request(f"messages[{index}] needs a 'role' of {', '.join(sorted(CHAT_ROLES))}.")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid_request("'stream' must be true or false.")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and not _whole_number_in(value, 1, MAX_TOKENS_CEILING):
            raise invalid_request(f"'{name}' must be a whole number from 1 to {MAX_TOKENS_CEILING:,}.")
    n = body.get("n")
    if n is not None and not _whole_number_in(n, 1, MAX_CHOICES):
        raise invalid_request(f"'n' must be a whole number from 1 to {MAX_CHOICES}.")
    if "stream_options" in body and not isinstance(body["stream_options"], dict | type(None)):
        raise invalid_request("'stream_options' must be an object.")


def validate_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    valid = (isinstance(value, str) and value) or (
        isinstance(value, list) and value and all(isinstance(item, str | int) for item in value)
    )
    if not valid:
        raise invalid_request("'input' must be a non-empty string or list.")


def _whole_number_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

"""Log lines as one JSON object each, for log shippers; plain text for people in development.

The control plane's formatter (controlplane/logs.py) extends this one, so every Gatehouse
process writes the same shape: time (ISO-8601, UTC), level, logger, message, role, pid, and
`request_id` when the line belongs to a request (here the gateway's server-side id, passed as
`extra={"request_id": ...}`), `exception` when there is one. Only these fields are written,
never the record's other attributes, so a secret an object carries cannot ride along; what
looks like a credential inside a message is masked as a last line of defence (DESIGN.md
promise 2 is kept by not logging secrets at all: the masking only catches mistakes).
"""

import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

FORMATS = ("json", "text")
# Bearer tokens, Gatehouse caller keys (gh_) and management tokens (ghm_), OpenAI and Anthropic
# style provider keys (sk-...).
CREDENTIAL_PATTERN = re.compile(
    r"(?i:(?<=bearer )[A-Za-z0-9._~+/=-]{8,})|\bghm?_[A-Za-z0-9_-]{16,}|\bsk-[A-Za-z0-9_-]{12,}"
)
MASK = "[redacted]"
# Context fields a record may carry (set by a logging.Filter or passed in `extra=`).
CONTEXT_FIELDS = ("request_id", "task", "parent_request_id")


def mask_credentials(text: str, pattern: re.Pattern[str] = CREDENTIAL_PATTERN) -> str:
    return pattern.sub(MASK, text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `role` names the process (gateway, web, worker, ...)."""

    def __init__(self, role: str = "gateway", pattern: re.Pattern[str] = CREDENTIAL_PATTERN) -> None:
        super().__init__()
        self.role, self.pattern = role, pattern

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": mask_credentials(record.getMessage(), self.pattern),
            "role": self.role,
            "pid": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                document[name] = str(value)
        if record.exc_info:
            document["exception"] = mask_credentials(self.formatException(record.exc_info), self.pattern)
        elif record.exc_text:
            document["exception"] = mask_credentials(record.exc_text, self.pattern)
        if record.stack_info:
            document["stack"] = mask_credentials(self.formatStack(record.stack_info), self.pattern)
        return orjson.dumps(document).decode()


class TextFormatter(logging.Formatter):
    """The development format: time, level, logger, [request id], message."""

    def __init__(self, pattern: re.Pattern[str] = CREDENTIAL_PATTERN) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")
        self.pattern = pattern

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.context = f" [{request_id}]" if request_id else ""
        return mask_credentials(super().format(record), self.pattern)


def log_format(environ: dict[str, str] | None = None) -> str:
    """GATEWAY_LOG_FORMAT, else GATEHOUSE_LOG_FORMAT, else text in development (DJANGO_DEBUG, as
    `make run` sets it) and JSON everywhere else."""
    environ = dict(os.environ) if environ is None else environ
    chosen = (environ.get("GATEWAY_LOG_FORMAT") or environ.get("GATEHOUSE_LOG_FORMAT") or "").strip().lower()
    if not chosen:
        development = environ.get("DJANGO_DEBUG", "").lower() in {"1", "true", "yes", "on"}
        chosen = "text" if development else "json"
    if chosen not in FORMATS:
        raise SystemExit(f"GATEWAY_LOG_FORMAT / GATEHOUSE_LOG_FORMAT must be json or text, got {chosen!r}")
    return chosen


def configure(role: str = "gateway", level: int | str = logging.INFO) -> None:
    """Send every log record of this process to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role) if log_format() == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

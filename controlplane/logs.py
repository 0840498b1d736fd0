"""Structured logs for every control-plane process: portal, Celery worker and beat, ingestion.

`settings.LOGGING` sends every record through `RequestContextFilter`, which adds the id of the
portal request being served (audit/middleware.py sets it, and echoes it as X-Request-ID) or,
inside a Celery task, the task id and the portal request that enqueued the task. The JSON
formatter is the gateway's (gateway/logs.py), so all processes write one shape; here it also
masks the values of the control plane's own secrets should one ever reach a message.
`GATEHOUSE_LOG_FORMAT` picks `json` (the default outside development) or `text`.
"""

import logging
import os
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from controlplane.request_context import request_meta
from gateway import logs as shared

MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    name: str
    parent_request_id: str = ""  # the portal request that enqueued the task, when one did


# Set by controlplane/celery.py around each task the worker runs.
current_task: ContextVar[TaskContext | None] = ContextVar("current_task", default=None)


class RequestContextFilter(logging.Filter):
    """Adds `request_id` (and inside tasks `task` and `parent_request_id`) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", ""):
            return True  # given explicitly with extra=
        task = current_task.get()
        if task is not None:
            record.request_id, record.task, record.parent_request_id = task.task_id, task.name, task.parent_request_id
        else:
            # django.request logs a failed request after the middleware has finished; the record
            # carries the request, which carries its id.
            record.request_id = request_meta.get().request_id or getattr(
                getattr(record, "request", None), "request_id", ""
            )
        return True


def process_role(argv: list[str] | None = None) -> str:
    """What this process is, for the `role` field: GATEHOUSE_PROCESS_ROLE, else read from the
    command line (web under gunicorn or runserver, worker, beat, ingestion, or the command)."""
    role = os.environ.get("GATEHOUSE_PROCESS_ROLE", "").strip()
    if role:
        return role
    argv = sys.argv if argv is None else argv
    path = Path(argv[0]) if argv else Path()
    program, arguments = path.name, argv[1:]
    if program == "__main__.py":  # python -m <package>
        program = path.parent.name
    # `python -m gunicorn` and `python -m celery` run .../gunicorn/__main__.py, .../celery/__main__.py
    if program == "gunicorn" or "gunicorn" in path.parts:
        return "web"
    if program == "celery" or "celery" in path.parts:
        return "beat" if "beat" in arguments else "worker" if "worker" in arguments else "celery"
    if program == "manage.py" and arguments:
        return {"runserver": "web", "ingest_usage": "ingestion"}.get(arguments[0], arguments[0])
    return program.removesuffix(".py") or "controlplane"


def secret_pattern() -> re.Pattern[str]:
    """Credential shapes (gateway/logs.py) and the exact values of the configured secrets."""
    from django.conf import settings

    values: list[str] = []
    if settings.configured:
        values = [
            getattr(settings, "SECRET_KEY", ""),
            getattr(settings, "GATEHOUSE_SIGNING_KEY", ""),
            getattr(settings, "GATEHOUSE_GATEWAY_KEY", ""),
            getattr(settings, "EMAIL_HOST_PASSWORD", ""),
            getattr(settings, "GATEHOUSE_METRICS_TOKEN", ""),
            *getattr(settings, "GATEHOUSE_KEK_RING", {}).values(),
        ]
    exact = sorted({value for value in values if value and len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    if not exact:
        return shared.CREDENTIAL_PATTERN
    return re.compile(shared.CREDENTIAL_PATTERN.pattern + "|" + "|".join(re.escape(value) for value in exact))


class JsonFormatter(shared.JsonFormatter):
    def __init__(self) -> None:
        super().__init__(role=process_role(), pattern=secret_pattern())


class TextFormatter(shared.TextFormatter):
    def __init__(self) -> None:
        super().__init__(pattern=secret_pattern())

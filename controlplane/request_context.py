"""The request being served, for whatever logs or records something during it: the portal's
middleware (audit/middleware.py) sets it for a request's duration; log lines
(controlplane/logs.py), Celery task headers (controlplane/celery.py) and audit events read it."""

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestMeta:
    ip: str | None = None
    user_agent: str = ""
    request_id: str = ""


request_meta: ContextVar[RequestMeta] = ContextVar("request_meta", default=RequestMeta())  # noqa: B039

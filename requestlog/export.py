"""Request log exports, CSV and JSON Lines, streamed from the page and the API.

An export holds at most EXPORT_LIMIT requests, newest first. It is read in keyset chunks (no
server-side cursor held open while a slow client reads), each labelled with a few queries. When
more requests match, the response says so in X-Export-Truncated and gives, in X-Next-Cursor,
the cursor the next export (or API page) continues from.
"""

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

from audit.export import csv_cell

from .queries import (
    NEWEST_FIRST,
    Cursor,
    Labeller,
    Viewer,
    client_details,
    cost_text,
    cursor_of,
    encode_cursor,
    older_than,
)

EXPORT_LIMIT = 100_000
CHUNK_SIZE = 2000
FORMATS = {"csv": ("text/csv; charset=utf-8", "csv"), "jsonl": ("application/x-ndjson", "jsonl")}
CSV_HEADER = [
    "request_id",
    "client_request_id",
    "occurred_at",
    "model",
    "endpoint",
    "status",
    "error_code",
    "stream",
    "team_id",
    "team",
    "key_id",
    "key",
    "key_prefix",
    "user_email",
    "deployment_id",
    "deployment",
    "provider",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "node_id",
    "attempts",
    "client_ip",
    "user_agent",
]


def iso_moment(moment: datetime) -> str:
    """As the API writes date-times: ISO 8601 in UTC with a Z."""
    text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def deployment_fields(deployment) -> dict | None:
    if deployment is None:
        return None
    return {"id": deployment.id, "name": deployment.name, "provider": deployment.provider}


def attempt_fields(attempt) -> dict:
    after = None
    if attempt.kind != "first":
        after = {
            "status": attempt.after_status,
            "error_code": attempt.after_error_code,
            "condition": attempt.after_condition,
        }
    return {
        "deployment": deployment_fields(attempt.deployment),
        "provider": attempt.provider,
        "status": attempt.status,
        "error_code": attempt.error_code,
        "latency_ms": attempt.latency_ms,
        "kind": attempt.kind,
        "after": after,
    }


def request_fields(record) -> dict:
    """A labelled record (queries.Labeller) as one JSON object: a JSON Lines line, and the same
    object the API's RequestOutput gives."""
    key = record.key_label
    client_ip, user_agent = client_details(record)
    return {
        "request_id": record.request_id,
        "client_request_id": record.client_request_id,
        "occurred_at": iso_moment(record.occurred_at),
        "model": record.alias,
        "endpoint": record.endpoint,
        "status": record.status,
        "error_code": record.error_code,
        "stream": record.stream,
        "team": {"id": str(record.team_id), "name": record.team_name},
        "key": {"id": str(key.id), "name": key.name, "prefix": key.prefix},
        "user": {"id": str(key.owner_uuid), "email": key.owner_email} if key.owner_uuid else None,
        "deployment": deployment_fields(record.deployment_label),
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost": cost_text(record.cost_shown),
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "node_id": record.node_id,
        "attempts": [attempt_fields(attempt) for attempt in record.attempt_list],
        "client_ip": client_ip,
        "user_agent": user_agent,
    }


def csv_row(record) -> list:
    key, deployment = record.key_label, record.deployment_label
    client_ip, user_agent = client_details(record)
    attempts = json.dumps([attempt_fields(attempt) for attempt in record.attempt_list], separators=(",", ":"))
    cells = [
        record.request_id,
        record.client_request_id,
        iso_moment(record.occurred_at),
        record.alias,
        record.endpoint,
        record.status,
        record.error_code,
        "true" if record.stream else "false",
        record.team_id,
        record.team_name,
        key.id,
        key.name,
        key.prefix,
        key.owner_email,
        deployment.id if deployment else None,
        deployment.name if deployment else None,
        deployment.provider if deployment else None,
        record.input_tokens,
        record.output_tokens,
        cost_text(record.cost_shown),
        record.latency_ms,
        record.ttft_ms,
        record.node_id,
        attempts,
        client_ip,
        user_agent,
    ]
    return [csv_cell(cell) for cell in cells]


class _Echo:
    """A file-like object csv.writer writes a line to and gets it straight back."""

    def write(self, value: str) -> str:
        return value


def exported_records(viewer: Viewer, records: QuerySet, start: Cursor | None) -> Iterator:
    """Up to EXPORT_LIMIT labelled records, newest first, below `start` if given."""
    labeller = Labeller(viewer)
    remaining, cursor = EXPORT_LIMIT, start
    while remaining > 0:
        below = older_than(records, cursor) if cursor is not None else records
        chunk = list(below.order_by(*NEWEST_FIRST)[: min(CHUNK_SIZE, remaining)])
        yield from labeller.label(chunk)
        remaining -= len(chunk)
        if len(chunk) < CHUNK_SIZE:
            return
        cursor = cursor_of(chunk[-1])


def csv_lines(viewer: Viewer, records: QuerySet, start: Cursor | None) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    for record in exported_records(viewer, records, start):
        yield writer.writerow(csv_row(record))


def jsonl_lines(viewer: Viewer, records: QuerySet, start: Cursor | None) -> Iterator[str]:
    for record in exported_records(viewer, records, start):
        yield json.dumps(request_fields(record), ensure_ascii=False, separators=(",", ":")) + "\n"


def continuation(records: QuerySet, start: Cursor | None) -> str | None:
    """The cursor after the export's last row when more rows match than an export holds."""
    below = older_than(records, start) if start is not None else records
    edge = list(below.order_by(*NEWEST_FIRST).only("occurred_at", "request_id")[EXPORT_LIMIT - 1 : EXPORT_LIMIT + 1])
    return encode_cursor(edge[0]) if len(edge) == 2 else None


def export_response(
    viewer: Viewer, records: QuerySet, export_format: str, start: Cursor | None = None
) -> StreamingHttpResponse:
    content_type, extension = FORMATS[export_format]
    lines = csv_lines if export_format == "csv" else jsonl_lines
    response = StreamingHttpResponse(lines(viewer, records, start), content_type=content_type)
    moment = timezone.now().astimezone(UTC)
    filename = f"requests-{viewer.org.slug}-{moment:%Y%m%dT%H%M%SZ}.{extension}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Export-Limit"] = str(EXPORT_LIMIT)
    next_cursor = continuation(records, start)
    response["X-Export-Truncated"] = "true" if next_cursor else "false"
    if next_cursor:
        response["X-Next-Cursor"] = next_cursor
    return response

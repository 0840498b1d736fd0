"""Exporting an org's audit trail: CSV, JSON Lines and OCSF API Activity (class 6003) as JSON Lines.

Rows are read with a server-side cursor in sequence order and turned into lines one at a time,
so an export of any size holds one chunk of rows in memory. A request streams them; an export
too large for a request runs as a Celery job (`run_export`) that writes a file and its SHA-256.
Every export is itself an audit event, `audit.exported`, recorded when it starts; the export
covers the events before that one, so what it contains does not depend on when it is read.
"""

import csv
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Func, Q, TextField, Value
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.datastructures import MultiValueDict

from .context import Actor
from .filters import filter_events
from .forms import AuditFilterForm
from .models import AuditChainHead, AuditEvent, AuditExport
from .services import record_event

log = logging.getLogger("audit.export")

FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson", "jsonl"),
    "ocsf": ("application/x-ndjson", "ocsf.jsonl"),
}
# Above this many rows an export runs as a job rather than in the request.
ASYNC_THRESHOLD = 100_000
CHUNK_SIZE = 2000
PROGRESS_EVERY = 10_000
# A running job that has not reported progress for this long is taken to have died.
STALE_AFTER = timedelta(minutes=10)

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CSV_HEADER = [
    "sequence",
    "created_at",
    "action",
    "actor_type",
    "actor_id",
    "actor_label",
    "target_type",
    "target_id",
    "target_label",
    "ip",
    "user_agent",
    "request_id",
    "diff",
    "prev_hash",
    "hash",
]
# Read as plain tuples of text, converted by PostgreSQL: building model instances, UUIDs,
# datetimes and decoded JSON in Python would cost more than writing the lines.
COLUMNS = (
    "uuid_text",
    "org_text",
    "sequence",
    "action",
    "actor_type",
    "actor_id",
    "actor_label",
    "target_type",
    "target_id",
    "target_label",
    "diff_text",
    "ip_text",
    "user_agent",
    "request_id",
    "created_text",
    "prev_hash",
    "hash",
)
TEXT_COLUMNS = {
    "uuid_text": Cast("uuid", TextField()),
    "org_text": Cast("org_id", TextField()),
    "diff_text": Cast("diff", TextField()),
    "ip_text": Func(F("ip"), function="host", output_field=TextField()),
    # The same text the event's hash covers (audit.services.canonical_encoding).
    "created_text": Func(
        Func(Value("UTC"), F("created_at"), function="timezone", output_field=TextField()),
        Value('YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        function="to_char",
        output_field=TextField(),
    ),
}

OCSF_VERSION = "1.3.0"
OCSF_CLASS_UID = 6003
OCSF_CATEGORY_UID = 6
OCSF_ACTIVITIES = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
# The last word of an action's verb ("member.role_changed" -> "changed") decides its activity.
CREATE_VERBS = frozenset({"created", "issued", "invited", "added", "joined", "registered", "granted"})
READ_VERBS = frozenset({"exported", "read", "viewed", "downloaded", "verified"})
UPDATE_VERBS = frozenset(
    {"updated", "changed", "rotated", "replaced", "set", "republished", "rolled_back", "renamed", "tested"}
)
DELETE_VERBS = frozenset({"deleted", "removed", "revoked", "bulk_revoked", "purged"})
OCSF_USER_TYPES = {"user": ("User", 1), "system": ("System", 3)}


# Filters -------------------------------------------------------------------------------------


def filter_data(data: Mapping) -> dict[str, str | list[str]]:
    """The filters of a query string or form, as JSON: one value per field, or a list of them."""
    fields = AuditFilterForm.base_fields
    found: dict[str, str | list[str]] = {}
    for name in fields:
        values = [value for value in (data.getlist(name) if hasattr(data, "getlist") else [data.get(name)]) if value]
        if values:
            found[name] = values[0] if len(values) == 1 else values
    return found


def filter_form(filters: Mapping) -> AuditFilterForm:
    """The search page's filter form bound to stored filters (see `filter_data`)."""
    data = MultiValueDict({name: value if isinstance(value, list) else [value] for name, value in filters.items()})
    return AuditFilterForm(data)


def form_errors(form) -> dict[str, list[str]]:
    return {field: [str(message) for message in messages] for field, messages in form.errors.items()}


def export_events(org, filters: Mapping, *, through_sequence: int | None = None):
    """The org's events matching `filters`, oldest first; ValidationError for bad filters."""
    form = filter_form(filters)
    if not form.is_valid():
        raise ValidationError(form_errors(form))
    events = filter_events(AuditEvent.objects.filter(org=org), form.cleaned_data)
    if through_sequence is not None:
        events = events.filter(sequence__lte=through_sequence)
    return events.order_by("sequence")


# Formats ---------------------------------------------------------------------------------------


def csv_cell(value) -> str:
    """A cell a spreadsheet will show as text, never run as a formula."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_PREFIXES) else text


class _Echo:
    """A file-like object csv.writer writes a line to and gets it straight back."""

    def write(self, value: str) -> str:
        return value


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _event_line(row: tuple) -> str:
    """Every field of the event under its own name, so its hash can be recomputed from the line.
    The diff is spliced in as the text PostgreSQL gave: decoding and encoding it again costs more."""
    uid, org_id, sequence, action, actor_type, actor_id, actor_label, target_type, target_id, target_label = row[:10]
    diff, ip, user_agent, request_id, created_at, prev_hash, digest = row[10:]
    fields = {
        "uuid": uid,
        "org": org_id,
        "sequence": sequence,
        "action": action,
        "actor_type": actor_type,
        "actor_id": actor_id,
        "actor_label": actor_label,
        "target_type": target_type,
        "target_id": target_id,
        "target_label": target_label,
        "ip": ip,
        "user_agent": user_agent,
        "request_id": request_id,
        "created_at": created_at,
        "prev_hash": prev_hash,
        "hash": digest,
    }
    return f'{_dumps(fields)[:-1]},"diff":{diff}}}'


def _event(row: tuple) -> dict:
    return json.loads(_event_line(row))


def csv_lines(rows: Iterable[tuple]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    for row in rows:
        (_uid, _org, sequence, action, a_type, a_id, a_label, t_type, t_id, t_label, diff, ip, agent, request_id) = row[
            :14
        ]
        created_at, prev_hash, digest = row[14:]
        cells = (action, a_type, a_id, a_label, t_type, t_id, t_label, ip, agent, request_id)
        action, a_type, a_id, a_label, t_type, t_id, t_label, ip, agent, request_id = map(csv_cell, cells)
        yield writer.writerow(
            (
                sequence,
                created_at,
                action,
                a_type,
                a_id,
                a_label,
                t_type,
                t_id,
                t_label,
                ip,
                agent,
                request_id,
                csv_cell(diff),
                prev_hash,
                digest,
            )
        )


def jsonl_lines(rows: Iterable[tuple]) -> Iterator[str]:
    for row in rows:
        yield _event_line(row) + "\n"


def ocsf_activity(action: str) -> int:
    verb = action.rsplit(".", 1)[-1]
    if verb in CREATE_VERBS:
        return 1
    if verb in READ_VERBS:
        return 2
    if verb in UPDATE_VERBS or verb.endswith(("_changed", "_updated", "_replaced", "_rotated")):
        return 3
    if verb in DELETE_VERBS or verb.endswith(("_removed", "_revoked", "_deleted")):
        return 4
    return 99


def ocsf_event(event: dict) -> dict:
    """One event as an OCSF 1.3.0 API Activity (class 6003) event."""
    activity_id = ocsf_activity(event["action"])
    user_type, user_type_id = OCSF_USER_TYPES.get(event["actor_type"], ("Other", 99))
    created_at = datetime.fromisoformat(event["created_at"])
    resource = {"type": event["target_type"], "uid": event["target_id"], "name": event["target_label"]}
    return {
        "class_uid": OCSF_CLASS_UID,
        "class_name": "API Activity",
        "category_uid": OCSF_CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": OCSF_ACTIVITIES[activity_id],
        "type_uid": OCSF_CLASS_UID * 100 + activity_id,
        "type_name": f"API Activity: {OCSF_ACTIVITIES[activity_id]}",
        "time": int(created_at.timestamp() * 1000),
        "time_dt": event["created_at"],
        "severity_id": 1,
        "severity": "Informational",
        "status_id": 1,
        "status": "Success",
        "actor": {
            "user": {
                "name": event["actor_label"],
                "uid": event["actor_id"],
                "type": user_type,
                "type_id": user_type_id,
            }
        },
        "api": {"operation": event["action"], "request": {"uid": event["request_id"]}},
        # Required by the class; Gatehouse is its own "cloud", wherever it is hosted.
        "cloud": {"provider": "Gatehouse"},
        "src_endpoint": {"ip": event["ip"]} if event["ip"] else {},
        "http_request": {"user_agent": event["user_agent"]},
        "resources": [resource] if event["target_type"] else [],
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Gatehouse", "vendor_name": "Gatehouse"},
            "uid": event["uuid"],
            "sequence": event["sequence"],
        },
        "unmapped": {"diff": event["diff"], "hash": event["hash"], "prev_hash": event["prev_hash"]},
    }


def ocsf_lines(rows: Iterable[tuple]) -> Iterator[str]:
    for row in rows:
        yield _dumps(ocsf_event(_event(row))) + "\n"


WRITERS = {"csv": csv_lines, "jsonl": jsonl_lines, "ocsf": ocsf_lines}


def export_rows(events) -> Iterator[tuple]:
    """The events of a queryset as tuples of COLUMNS, through a server-side cursor."""
    return events.annotate(**TEXT_COLUMNS).values_list(*COLUMNS).iterator(chunk_size=CHUNK_SIZE)


def export_lines(events, export_format: str) -> Iterator[str]:
    """The lines of an export of `events` (a queryset in sequence order) in one of FORMATS."""
    return WRITERS[export_format](export_rows(events))


# Services ----------------------------------------------------------------------------------


def record_export(*, actor: Actor, org, export_format: str, filters: Mapping) -> AuditEvent:
    """Record that a streamed export of the org's trail starts; it covers the events before this one.
    Its row count is not known until the last line is sent, so the event does not hold one."""
    diff = {"format": export_format, "filters": dict(filters)}
    return record_event(
        actor=actor,
        org=org,
        action="audit.exported",
        target_type="audit_export",
        target_label=f"{export_format} export",
        diff=diff,
    )


def chain_head_sequence(org) -> int:
    head = AuditChainHead.objects.filter(chain=str(org.pk)).values_list("sequence", flat=True).first()
    return head or 0


def start_export(*, actor: Actor, org, export_format: str, filters: Mapping) -> AuditExport:
    """Queue an export job writing a file; ValidationError for a bad format or bad filters."""
    if export_format not in FORMATS:
        raise ValidationError({"format": [f"Choose one of: {', '.join(FORMATS)}."]})
    through = chain_head_sequence(org)
    events = export_events(org, filters, through_sequence=through)
    with transaction.atomic():
        export = AuditExport.objects.create(
            org=org,
            requested_by_id=actor.user_id,
            requested_by_label=actor.label[:254],
            format=export_format,
            filters=dict(filters),
            through_sequence=through,
            rows_total=events.count(),
        )
        record_event(
            actor=actor,
            org=org,
            action="audit.exported",
            target_type="audit_export",
            target_id=str(export.id),
            target_label=f"{export_format} export",
            diff={"format": export_format, "filters": dict(filters), "rows": export.rows_total},
        )
        export_tasks.run_export.delay_on_commit(str(export.id))
    return export


def export_dir() -> Path:
    return Path(settings.BASE_DIR) / "var" / "exports"


def export_file(export: AuditExport) -> Path | None:
    """The file of a finished export, if it is still there."""
    if export.status != AuditExport.Status.DONE or not export.file_path:
        return None
    root = export_dir().resolve()
    path = (root / export.file_path).resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path


def _claim(export_id) -> uuid.UUID | None:
    """Take a queued export, or one whose run stopped reporting, for this run (a conditional UPDATE)."""
    run_id, now = uuid.uuid4(), timezone.now()
    claimable = Q(status=AuditExport.Status.PENDING) | Q(
        status=AuditExport.Status.RUNNING, updated_at__lt=now - STALE_AFTER
    )
    claimed = AuditExport.objects.filter(claimable, pk=export_id).update(
        status=AuditExport.Status.RUNNING, run_id=run_id, rows_done=0, updated_at=now
    )
    return run_id if claimed else None


def run_export(export_id) -> bool:
    """Write a queued export's file, reporting progress; False when another run holds it."""
    run_id = _claim(export_id)
    if run_id is None:
        return False
    export = AuditExport.objects.select_related("org").get(pk=export_id)
    mine = AuditExport.objects.filter(pk=export_id, run_id=run_id)
    extension = FORMATS[export.format][1]
    relative = Path(str(export.org_id)) / f"{export.id}-{run_id.hex[:8]}.{extension}"
    path = export_dir() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    digest, size, rows = hashlib.sha256(), 0, 0
    try:
        events = export_events(export.org, export.filters, through_sequence=export.through_sequence)
        with path.open("wb") as file:
            for line in _counted(export_lines(events, export.format), export.format):
                if line is None:
                    rows += 1
                    if rows % PROGRESS_EVERY == 0:
                        mine.filter(rows_done__lt=rows).update(rows_done=rows, updated_at=timezone.now())
                    continue
                data = line.encode()
                digest.update(data)
                size += len(data)
                file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except Exception as error:
        log.exception("audit export %s failed", export_id)
        path.unlink(missing_ok=True)
        mine.filter(status=AuditExport.Status.RUNNING).update(
            status=AuditExport.Status.FAILED, error=str(error)[:255], finished_at=timezone.now()
        )
        raise
    done = mine.filter(status=AuditExport.Status.RUNNING).update(
        status=AuditExport.Status.DONE,
        rows_done=rows,
        file_path=str(relative),
        sha256=digest.hexdigest(),
        size=size,
        finished_at=timezone.now(),
        updated_at=timezone.now(),
    )
    if not done:
        # Taken over by another run while this one looked dead: its file is the one kept.
        path.unlink(missing_ok=True)
    return bool(done)


def _counted(lines: Iterator[str], export_format: str) -> Iterator[str | None]:
    """The lines, with a None after each one that holds an event (every line but CSV's header)."""
    if export_format == "csv":
        yield next(lines)
    for line in lines:
        yield line
        yield None


from . import export_tasks  # noqa: E402  (registers the job's task; it imports this module)

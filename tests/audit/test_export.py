"""audit/export.py and its routes: CSV, JSON Lines and OCSF exports, streamed or as a Celery job."""

import csv
import hashlib
import io
import json
import time

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from audit import export as exports
from audit.context import RequestMeta, request_meta
from audit.models import AuditEvent, AuditExport
from audit.services import canonical_encoding, event_hash, record_event
from tests.conftest import SYSTEM


@pytest.fixture(autouse=True)
def _exports_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(exports, "export_dir", lambda: tmp_path / "exports")


@pytest.fixture
def events(org):
    """Three team events, the middle one with values a spreadsheet would run as formulas."""
    token = request_meta.set(RequestMeta(ip="203.0.113.7", user_agent="=cmd|' /C calc'!A0", request_id="req-1"))
    try:
        return [
            record_event(
                actor=SYSTEM, org=org, action="team.created", target_type="team", target_id="t1", target_label="Alpha"
            ),
            record_event(
                actor=SYSTEM,
                org=org,
                action="team.updated",
                target_type="team",
                target_id="t1",
                target_label='=HYPERLINK("http://evil.test","x")',
                diff={"name": {"before": "Alpha", "after": "-2+3"}},
            ),
            record_event(
                actor=SYSTEM, org=org, action="team.deleted", target_type="team", target_id="t1", target_label="@SUM(1)"
            ),
        ]
    finally:
        request_meta.reset(token)


def url(org, **params) -> str:
    base = reverse("api:audit:export", kwargs={"org_slug": org.slug})
    return base + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


def body(response) -> str:
    return b"".join(response.streaming_content).decode()


def test_csv_has_every_column_and_neutralises_formulas(org, events, client_for):
    response = client_for("auditor").get(url(org, format="csv", action="team."))
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-acme-')
    rows = list(csv.reader(io.StringIO(body(response))))
    assert rows[0] == exports.CSV_HEADER
    assert [row[0] for row in rows[1:]] == [str(event.sequence) for event in events]
    created = dict(zip(rows[0], rows[1], strict=True))
    assert created["created_at"] == events[0].created_at.isoformat(timespec="microseconds")
    assert created["created_at"].endswith("+00:00")
    assert (created["action"], created["actor_type"], created["actor_label"]) == ("team.created", "system", "tests")
    assert (created["target_type"], created["target_id"], created["target_label"]) == ("team", "t1", "Alpha")
    assert (created["ip"], created["request_id"]) == ("203.0.113.7", "req-1")
    assert (created["prev_hash"], created["hash"]) == (events[0].prev_hash, events[0].hash)
    assert created["user_agent"] == "'=cmd|' /C calc'!A0"
    updated = dict(zip(rows[0], rows[2], strict=True))
    assert updated["target_label"] == '\'=HYPERLINK("http://evil.test","x")'
    assert json.loads(updated["diff"]) == {"name": {"before": "Alpha", "after": "-2+3"}}
    assert dict(zip(rows[0], rows[3], strict=True))["target_label"] == "'@SUM(1)"


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@A1", "\tx", "\rx"])
def test_every_formula_prefix_is_neutralised(text):
    assert exports.csv_cell(text) == "'" + text
    assert exports.csv_cell("plain " + text) == "plain " + text


def test_json_lines_carry_every_field_and_the_hash_can_be_recomputed(org, events, client_for):
    response = client_for("admin").get(url(org, format="jsonl", action="team."))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    lines = body(response).splitlines()
    assert len(lines) == 3
    line = json.loads(lines[1])
    event = events[1]
    assert line == {
        "uuid": str(event.uuid),
        "org": str(org.pk),
        "sequence": event.sequence,
        "action": "team.updated",
        "actor_type": "system",
        "actor_id": "",
        "actor_label": "tests",
        "target_type": "team",
        "target_id": "t1",
        "target_label": '=HYPERLINK("http://evil.test","x")',
        "diff": {"name": {"before": "Alpha", "after": "-2+3"}},
        "ip": "203.0.113.7",
        "user_agent": "=cmd|' /C calc'!A0",
        "request_id": "req-1",
        "created_at": event.created_at.isoformat(timespec="microseconds"),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
    # What the hash covers is in the line: an offline verifier needs nothing else.
    fields = {key: value for key, value in line.items() if key != "hash"}
    assert hashlib.sha256(canonical_encoding(event)).hexdigest() == line["hash"] == event_hash(event)
    assert json.loads(canonical_encoding(event))["created_at"] == fields["created_at"]


def test_ocsf_events_are_api_activity_with_the_activity_of_the_action(org, events, client_for):
    response = client_for("owner").get(url(org, format="ocsf", action="team."))
    assert response.status_code == 200
    lines = [json.loads(line) for line in body(response).splitlines()]
    assert [(line["activity_id"], line["type_uid"]) for line in lines] == [(1, 600301), (3, 600303), (4, 600304)]
    first, event = lines[0], events[0]
    assert (first["class_uid"], first["category_uid"], first["severity_id"], first["status_id"]) == (6003, 6, 1, 1)
    assert first["time"] == int(event.created_at.timestamp() * 1000)
    assert first["actor"]["user"] == {"name": "tests", "uid": "", "type": "System", "type_id": 3}
    assert first["api"] == {"operation": "team.created", "request": {"uid": "req-1"}}
    assert first["src_endpoint"] == {"ip": "203.0.113.7"}
    assert first["http_request"] == {"user_agent": "=cmd|' /C calc'!A0"}
    assert first["resources"] == [{"type": "team", "uid": "t1", "name": "Alpha"}]
    assert first["cloud"] == {"provider": "Gatehouse"}
    assert first["metadata"] == {
        "version": "1.3.0",
        "product": {"name": "Gatehouse", "vendor_name": "Gatehouse"},
        "uid": str(event.uuid),
        "sequence": event.sequence,
    }
    assert first["unmapped"] == {"diff": {}, "hash": event.hash, "prev_hash": event.prev_hash}
    assert lines[1]["unmapped"]["diff"] == {"name": {"before": "Alpha", "after": "-2+3"}}


@pytest.mark.parametrize(
    ("action", "activity"),
    [
        ("team.created", 1),
        ("key.issued", 1),
        ("audit.exported", 2),
        ("member.role_changed", 3),
        ("key.rotated", 3),
        ("key.revoked", 4),
        ("member.removed", 4),
        ("auth.login", 99),
    ],
)
def test_ocsf_activity_comes_from_the_verb(action, activity):
    assert exports.ocsf_activity(action) == activity


def test_filters_are_the_audit_pages(org, events, client_for):
    response = client_for("auditor").get(url(org, format="jsonl", action="team.updated", q="HYPERLINK"))
    assert [json.loads(line)["sequence"] for line in body(response).splitlines()] == [events[1].sequence]
    response = client_for("auditor").get(url(org, format="jsonl", ip="203.0.113.0/24", action="team."))
    assert len(body(response).splitlines()) == 3


def test_zero_rows_is_an_empty_file_with_its_header(org, events, client_for):
    response = client_for("auditor").get(url(org, format="csv", action="nothing.happened"))
    assert response.status_code == 200
    assert body(response) == ",".join(exports.CSV_HEADER) + "\r\n"
    response = client_for("auditor").get(url(org, format="ocsf", action="nothing.happened"))
    assert (response.status_code, body(response)) == (200, "")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "xlsx"}, "format"),
        ({"format": "csv", "since": "yesterday"}, "since"),
        ({"format": "csv", "since": "2025-03-02", "until": "2025-03-01"}, "until"),
        ({"format": "csv", "ip": "not-an-ip"}, "ip"),
    ],
)
def test_a_bad_format_or_filter_is_a_400_and_records_nothing(org, events, client_for, params, field):
    client = client_for("auditor")  # signing in is an event too
    before = AuditEvent.objects.filter(org=org).count()
    response = client.get(url(org, **params))
    assert response.status_code == 400
    assert field in response.json()
    assert AuditEvent.objects.filter(org=org).count() == before


def test_every_export_is_an_audit_event_that_it_does_not_contain(org, events, client_for, users):
    response = client_for("auditor").get(url(org, format="jsonl", action="team."))
    event = AuditEvent.objects.filter(org=org).order_by("-sequence").first()
    assert event.action == "audit.exported"
    assert (event.actor_type, event.actor_label) == ("user", users["auditor"].email)
    assert event.diff == {"format": "jsonl", "filters": {"action": "team."}}
    response = client_for("auditor").get(url(org, format="jsonl", action="audit."))
    sequences = [json.loads(line)["sequence"] for line in body(response).splitlines()]
    # The second export holds the first one's event, not its own.
    assert sequences == [event.sequence]


@pytest.mark.parametrize("role", ["owner", "admin", "auditor"])
def test_owners_admins_and_auditors_may_export(org, events, client_for, role):
    assert client_for(role).get(url(org, format="csv")).status_code == 200
    assert client_for(role).get(reverse("audit:export_list", kwargs={"org_slug": org.slug})).status_code == 200


@pytest.mark.parametrize("role", ["finance", "developer", "viewer"])
def test_other_roles_may_not(org, events, client_for, role):
    client = client_for(role)
    before = AuditEvent.objects.filter(org=org).count()
    assert client.get(url(org, format="csv")).status_code == 403
    assert client.get(reverse("audit:export_list", kwargs={"org_slug": org.slug})).status_code == 403
    assert AuditEvent.objects.filter(org=org).count() == before


def test_a_job_runs_once_and_its_file_matches_the_stream(org, events, actors, client_for):
    export = exports.start_export(actor=actors["auditor"], org=org, export_format="csv", filters={"action": "team."})
    assert (export.status, export.rows_total) == (AuditExport.Status.PENDING, 3)
    recorded = AuditEvent.objects.filter(org=org).order_by("-sequence").first()
    assert recorded.diff == {"format": "csv", "filters": {"action": "team."}, "rows": 3}
    assert recorded.target_id == str(export.pk)
    assert exports.run_export(export.pk) is True
    assert exports.run_export(export.pk) is False  # a second delivery of the task
    export.refresh_from_db()
    assert (export.status, export.rows_done) == (AuditExport.Status.DONE, 3)
    content = exports.export_file(export).read_bytes()
    assert hashlib.sha256(content).hexdigest() == export.sha256
    assert len(content) == export.size
    assert len(list(csv.reader(io.StringIO(content.decode())))) == 4
    download = client_for("auditor").get(
        reverse("audit:export_download", kwargs={"org_slug": org.slug, "export_id": export.pk})
    )
    assert download.status_code == 200
    assert download["X-Content-SHA256"] == export.sha256
    assert b"".join(download.streaming_content) == content


def test_the_page_starts_an_export_and_shows_its_progress(org, events, client_for):
    page = reverse("audit:export_list", kwargs={"org_slug": org.slug})
    refused = client_for("auditor").post(page, {"format": "csv", "since": "junk"})
    assert refused.status_code == 400
    assert "Enter a date" in refused.content.decode()
    response = client_for("auditor").post(page, {"format": "ocsf", "action": "team."})
    assert response.status_code == 302
    export = AuditExport.objects.get(org=org)
    assert (export.format, export.filters, export.rows_total) == ("ocsf", {"action": "team."}, 3)
    shown = client_for("auditor").get(page).content.decode()
    assert '<progress id="progress-' in shown
    assert "0 of 3 events" in shown
    exports.run_export(export.pk)
    export.refresh_from_db()
    shown = client_for("auditor").get(page).content.decode()
    assert export.sha256 in shown
    assert reverse("audit:export_download", kwargs={"org_slug": org.slug, "export_id": export.pk}) in shown


def test_another_orgs_export_is_not_found(org, other_org, events, actors, client_for):
    other = exports.start_export(actor=SYSTEM, org=other_org, export_format="csv", filters={})
    exports.run_export(other.pk)
    kwargs = {"org_slug": org.slug, "export_id": other.pk}
    assert client_for("owner").get(reverse("audit:export_download", kwargs=kwargs)).status_code == 404
    assert client_for("owner").get(reverse("api:audit:export-job", kwargs=kwargs)).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_an_async_export_goes_through_the_worker(org, events, client_for, celery_worker_on_test_queue):
    client: Client = client_for("auditor")
    response = client.get(url(org, format="jsonl", action="team.", **{"async": "1"}))
    assert response.status_code == 202
    job_url = response["Location"]
    assert response.json()["rows_total"] == 3
    deadline = time.monotonic() + 20
    while (job := client.get(job_url).json())["status"] != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job["status"] == "done", job
    assert job["rows_done"] == 3
    download = client.get(job["download"])
    assert download.status_code == 200
    content = b"".join(download.streaming_content)
    assert hashlib.sha256(content).hexdigest() == job["sha256"]
    assert [json.loads(line)["uuid"] for line in content.decode().splitlines()] == [str(e.uuid) for e in events]

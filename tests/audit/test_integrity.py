"""Signed checkpoints, the retention purge, recorded verification and the offline verifier."""

import base64
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.utils import ProgrammingError
from django.urls import reverse
from django.utils import timezone

from audit.export import export_lines
from audit.integrity import (
    checkpoint_signature_valid,
    checkpoints_jsonl,
    purge_expired,
    sign_checkpoint,
    signing_public_key_text,
)
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import canonical_encoding, record_event, verify_chain
from orgs.services import create_team
from tests.conftest import SYSTEM

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "verify_audit_export.py"


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("verify_audit_export", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verifier = _load_script()


@pytest.fixture
def chain(org):
    """acme with 6 events: org.created, four teams, one with a non-ASCII, nested diff."""
    for name in ("One", "Two", "Three", "Four"):
        create_team(actor=SYSTEM, org=org, name=name)
    return org


def disable_trigger():
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_or_delete")


def tamper(sql: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        assert cursor.rowcount >= 1


def export_file(org, tmp_path, *, with_checkpoints: bool = True) -> Path:
    events = AuditEvent.objects.filter(org=org).order_by("sequence")
    path = tmp_path / "export.jsonl"
    path.write_text("".join(export_lines(events, "jsonl")), encoding="utf-8")
    if with_checkpoints:
        (tmp_path / "checkpoints.jsonl").write_text("".join(checkpoints_jsonl(org)), encoding="utf-8")
    return path


def run_verifier(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603
        [
            sys.executable,
            str(SCRIPT),
            str(tmp_path / "export.jsonl"),
            "--checkpoints",
            str(tmp_path / "checkpoints.jsonl"),
            "--public-key",
            signing_public_key_text(),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# The script's copy of the encoding ---------------------------------------------------------


def test_the_offline_encoding_equals_the_services_encoding_for_real_events(chain, tmp_path):
    record_event(
        actor=SYSTEM,
        org=chain,
        action="test.unicode",
        target_label='Ünïcødé \u2028 "quoted" \\ tab\t',
        diff={"b": {"before": [1, 2.5, None], "after": {"z": "ß", "a": True}}, "a": {"after": "日本"}},
    )
    record_event(actor=SYSTEM, org=None, action="auth.login_failed", target_label="nobody@x.test")
    path = export_file(chain, tmp_path, with_checkpoints=False)
    # Not splitlines(): it would also split at the U+2028 inside a JSON string.
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    events = {event.sequence: event for event in AuditEvent.objects.filter(org=chain)}
    assert len(lines) == len(events) == 6
    for line in lines:
        assert verifier.canonical_encoding(line) == canonical_encoding(events[line["sequence"]])
    platform = AuditEvent.objects.get(org__isnull=True)
    platform_line = json.loads(next(export_lines(AuditEvent.objects.filter(pk=platform.pk), "jsonl")))
    assert verifier.canonical_encoding(platform_line) == canonical_encoding(platform)


# Checkpoints ---------------------------------------------------------------------------------


def test_a_checkpoint_is_signed_only_when_the_head_moved(chain):
    first = sign_checkpoint(org=chain)
    assert (first.sequence, first.kind) == (5, "periodic")
    assert first.hash == AuditEvent.objects.get(org=chain, sequence=5).hash
    assert checkpoint_signature_valid(first)
    assert sign_checkpoint(org=chain) is None
    create_team(actor=SYSTEM, org=chain, name="Five")
    assert sign_checkpoint(org=chain).sequence == 6


def test_a_forged_or_altered_checkpoint_is_rejected(chain, tmp_path):
    checkpoint = sign_checkpoint(org=chain)
    checkpoint.hash = "f" * 64
    assert not checkpoint_signature_valid(checkpoint)
    forged = AuditCheckpoint.objects.create(
        org=chain,
        sequence=3,
        hash=AuditEvent.objects.get(org=chain, sequence=3).hash,
        kind="periodic",
        signature=base64.b64encode(b"\x01" * 64).decode(),
    )
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, 3)
    assert "invalid signature" in result.reason
    export_file(chain, tmp_path)
    completed = run_verifier(tmp_path)
    assert completed.returncode == 1
    assert "checkpoint at sequence 3 has an invalid signature" in completed.stderr
    assert forged.pk


def test_checkpoints_cannot_be_edited_or_deleted(chain):
    checkpoint = sign_checkpoint(org=chain)
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
        AuditCheckpoint.objects.filter(pk=checkpoint.pk).update(hash="0" * 64)
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
        AuditCheckpoint.objects.filter(pk=checkpoint.pk).delete()


def test_an_untampered_export_verifies_offline(chain, tmp_path):
    sign_checkpoint(org=chain)
    export_file(chain, tmp_path)
    completed = run_verifier(tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("OK 5 events, sequences 1-5")
    assert "1 signed checkpoints matched" in completed.stdout


def test_a_chain_rewritten_after_a_checkpoint_is_caught_by_it(chain, tmp_path):
    sign_checkpoint(org=chain)
    export_file(chain, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "export.jsonl").read_text().splitlines()]
    # Rewrite event 4 and recompute every hash after it: only the signed checkpoint disagrees.
    lines[3]["action"] = "team.renamed"
    for index in range(3, 5):
        lines[index]["prev_hash"] = lines[index - 1]["hash"]
        lines[index]["hash"] = verifier.event_hash(lines[index])
    (tmp_path / "export.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    completed = run_verifier(tmp_path)
    assert completed.returncode == 1
    assert "sequence 5: does not match the checkpoint signed" in completed.stderr


# Tampering, detected by verify_chain and by the offline verifier on an export ---------------


@pytest.mark.parametrize(
    ("sql", "sequence", "database_reason", "offline_reason"),
    [
        (
            "UPDATE audit_auditevent SET target_label = 'Innocent' WHERE org_id = %s AND sequence = 3",
            3,
            "content does not match its hash",
            "sequence 3: content does not match its hash",
        ),
        (
            "DELETE FROM audit_auditevent WHERE org_id = %s AND sequence = 2",
            2,
            "sequence 2 is missing (next is 3)",
            "sequence 2 is missing (next is 3)",
        ),
    ],
    ids=["edited", "deleted"],
)
def test_tampering_is_located_online_and_offline(chain, tmp_path, sql, sequence, database_reason, offline_reason):
    sign_checkpoint(org=chain)
    disable_trigger()
    tamper(sql, [chain.pk])
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, sequence)
    assert database_reason in result.reason
    export_file(chain, tmp_path)
    completed = run_verifier(tmp_path)
    assert completed.returncode == 1
    assert offline_reason in completed.stderr


def test_two_reordered_events_are_located_online_and_offline(chain, tmp_path):
    sign_checkpoint(org=chain)
    disable_trigger()
    for old, new in ((3, -3), (4, 3), (-3, 4)):
        tamper("UPDATE audit_auditevent SET sequence = %s WHERE org_id = %s AND sequence = %s", [new, chain.pk, old])
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, 3)
    export_file(chain, tmp_path)
    completed = run_verifier(tmp_path)
    assert completed.returncode == 1
    assert "sequence 3: prev_hash does not match" in completed.stderr


# Retention purge ---------------------------------------------------------------------------


def age_events(org, through: int, days: int) -> None:
    """Backdate events as if they were old: the hashes cover created_at, so recompute them all."""
    disable_trigger()
    old = timezone.now() - timedelta(days=days)
    previous = "0" * 64
    for event in AuditEvent.objects.filter(org=org).order_by("sequence"):
        if event.sequence <= through:
            event.created_at = old + timedelta(seconds=event.sequence)
        event.prev_hash = previous
        from audit.services import event_hash

        event.hash = event_hash(event)
        AuditEvent.objects.filter(pk=event.pk).update(created_at=event.created_at, prev_hash=previous, hash=event.hash)
        previous = event.hash
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s", [previous, str(org.pk)])
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_or_delete")


def test_a_purge_keeps_verification_passing_and_reports_itself(chain, tmp_path):
    age_events(chain, through=3, days=500)
    assert verify_chain(chain).ok
    result = purge_expired(chain)
    assert (result.purged_count, result.purged_through) == (3, 3)
    assert list(AuditEvent.objects.filter(org=chain).order_by("sequence").values_list("sequence", flat=True)) == [
        4,
        5,
        6,
    ]
    purged = AuditEvent.objects.get(org=chain, sequence=6)
    assert purged.action == "audit.purged"
    assert purged.diff["purged_count"] == {"after": 3}
    checkpoint = result.checkpoint
    assert (checkpoint.kind, checkpoint.purged_through_sequence, checkpoint.purged_count) == ("purge", 3, 3)
    assert checkpoint_signature_valid(checkpoint)
    verified = verify_chain(chain)
    assert (verified.ok, verified.checked) == (True, 3), verified
    assert f"3 events up to sequence 3 were purged on {checkpoint.created_at:%Y-%m-%d} under retention" == (
        verified.purge
    )
    assert purge_expired(chain) is None  # nothing more is due: harmless twice
    call_command("verify_audit", "--org", chain.slug)
    # Offline, the export starts at 4, right after the signed purge checkpoint.
    sign_checkpoint(org=chain)
    export_file(chain, tmp_path)
    completed = run_verifier(tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "events up to sequence 3 were purged under retention" in completed.stdout
    # Without the purge checkpoint, the missing start is a problem.
    lines = [line for line in (tmp_path / "checkpoints.jsonl").read_text().splitlines() if '"purge"' not in line]
    (tmp_path / "checkpoints.jsonl").write_text("\n".join(lines) + "\n")
    assert "sequence 3 and before are missing" in run_verifier(tmp_path).stderr


def test_an_event_deleted_after_a_purge_is_still_detected(chain):
    age_events(chain, through=2, days=500)
    purge_expired(chain)
    disable_trigger()
    tamper("DELETE FROM audit_auditevent WHERE org_id = %s AND sequence = 3", [chain.pk])
    result = verify_chain(chain)
    assert (result.ok, result.first_bad_sequence) == (False, 3)
    assert "sequence 3 is missing" in result.reason


def test_a_purge_refuses_to_remove_tampered_events(chain):
    from audit.integrity import PurgeRefused

    age_events(chain, through=3, days=500)
    disable_trigger()
    tamper("UPDATE audit_auditevent SET action = 'x' WHERE org_id = %s AND sequence = 2", [chain.pk])
    with pytest.raises(PurgeRefused, match="sequence 2"):
        purge_expired(chain)
    assert AuditEvent.objects.filter(org=chain, sequence=2).exists()


def test_nothing_is_purged_within_retention(chain):
    assert purge_expired(chain) is None
    call_command("purge_audit", "--org", chain.slug)
    assert AuditEvent.objects.filter(org=chain).count() == 5


def test_purge_audit_command(chain, capsys):
    age_events(chain, through=2, days=401)
    call_command("purge_audit", "--org", chain.slug)
    assert "Purged 2 events up to sequence 2" in capsys.readouterr().out


# The trigger after the purge bypass ----------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_auditevent SET action = 'x'", "DELETE FROM audit_auditevent", "TRUNCATE audit_auditevent"],
)
def test_update_delete_and_truncate_are_still_refused(chain, statement):
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)


@pytest.mark.parametrize("statement", ["UPDATE audit_auditevent SET action = 'x'", "TRUNCATE audit_auditevent"])
def test_the_purge_setting_lets_only_delete_through(chain, statement):
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL gatehouse.audit_purge = 'on'")
        cursor.execute(statement)


def test_the_bypass_ends_with_the_purge(chain):
    age_events(chain, through=2, days=500)
    with transaction.atomic():
        purge_expired(chain)
        # Still inside the same outer transaction: the setting was switched off again.
        with pytest.raises(ProgrammingError, match="DELETE refused"), transaction.atomic(), connection.cursor() as c:
            c.execute("DELETE FROM audit_auditevent WHERE org_id = %s", [chain.pk])
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('gatehouse.audit_purge', true)")
        assert cursor.fetchone()[0] != "on"


# Pages and API ---------------------------------------------------------------------------------


def test_the_verify_button_records_a_verification_shown_on_the_page(chain, client_for):
    client = client_for("auditor")
    before = AuditEvent.objects.filter(org=chain).count()
    response = client.post(reverse("audit:verify", kwargs={"org_slug": "acme"}))
    assert response.status_code == 302
    event = AuditEvent.objects.filter(org=chain).order_by("-sequence").first()
    assert event.action == "audit.verified"
    assert event.diff["ok"] == {"after": True}
    # The verification's own event is not part of what it checked.
    assert event.diff["checked"] == {"after": before} != {"after": before + 1}
    sign_checkpoint(org=chain)
    page = client.get(reverse("audit:integrity", kwargs={"org_slug": "acme"}))
    text = page.content.decode()
    assert "Passed" in text
    assert f"{before} events checked" in text
    assert "400 days" in text
    assert signing_public_key_text() in text
    assert verify_chain(chain).ok


def test_the_verify_api_reports_the_first_bad_sequence(chain, client_for):
    disable_trigger()
    tamper("UPDATE audit_auditevent SET target_label = 'x' WHERE org_id = %s AND sequence = 4", [chain.pk])
    response = client_for("admin").post(
        reverse("api:audit:verify", kwargs={"org_slug": "acme"}), content_type="application/json"
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["ok"], body["checked"], body["first_bad_sequence"]) == (False, 3, 4)
    assert body["reason"] == "content does not match its hash"
    assert AuditEvent.objects.filter(org=chain, action="audit.verified").exists()


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("developer", 403), ("outsider", 404)])
def test_the_verify_api_refuses_those_without_audit_read(chain, client_for, role, status):
    response = client_for(role).post(reverse("api:audit:verify", kwargs={"org_slug": "acme"}))
    assert response.status_code == status


def test_checkpoints_download_feeds_the_offline_verifier(org, client_for, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from django.conf import settings

    from audit.integrity import sign_checkpoint
    from gateway.config import public_key_text, signing_key_from_text

    sign_checkpoint(org=org)
    checkpoints = b"".join(
        client_for("auditor").get(f"/api/v1/orgs/{org.slug}/audit-events/checkpoints/").streaming_content
    )
    export = b"".join(
        client_for("auditor").get(f"/api/v1/orgs/{org.slug}/audit-events/export", {"format": "jsonl"}).streaming_content
    )
    (tmp_path / "events.jsonl").write_bytes(export)
    (tmp_path / "checkpoints.jsonl").write_bytes(checkpoints)
    assert b'"type": "checkpoint"' in checkpoints or b'"type":"checkpoint"' in checkpoints
    script = Path(settings.BASE_DIR) / "scripts" / "verify_audit_export.py"
    public_key = public_key_text(signing_key_from_text(settings.GATEHOUSE_SIGNING_KEY))
    result = subprocess.run(  # noqa: S603
        [
            sys.executable,
            str(script),
            str(tmp_path / "events.jsonl"),
            "--checkpoints",
            str(tmp_path / "checkpoints.jsonl"),
            "--public-key",
            public_key,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK")

"""Audit export throughput and memory: 1,000,000 events as CSV and JSON Lines.

Run: make bench BENCH=audit_export. Seeds one org with EVENTS hash-chained events (COPY, with
valid sequence, prev_hash and hash), then for each format runs the export in a child process,
through audit.export's generator (`export_lines`, as the API streams it and the job writes it),
into /dev/null. The child reports rows per second and its peak resident memory (ru_maxrss,
which includes Python and Django themselves). Targets: at least 50,000 rows/s, under 150 MB.
"""

import io
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

EVENTS = int(os.environ.get("AUDIT_EXPORT_EVENTS", "1000000"))
FORMATS = ("csv", "jsonl")
TARGET_ROWS_PER_SECOND = 50_000
TARGET_RSS_MB = 150
COPY_BATCH = 50_000
ACTIONS = ("team.created", "key.issued", "member.role_changed", "key.revoked", "budget.updated")


def seed_events(org) -> None:
    """EVENTS events of `org`, chained exactly as audit.services.record_event would chain them."""
    from django.db import connection

    from audit.models import AuditChainHead, AuditEvent
    from audit.services import GENESIS_HASH, event_hash

    start = datetime(2025, 1, 1, tzinfo=UTC)
    prev = GENESIS_HASH
    columns = [
        "uuid",
        "org_id",
        "sequence",
        "action",
        "actor_type",
        "actor_id",
        "actor_label",
        "target_type",
        "target_id",
        "target_label",
        "diff",
        "ip",
        "user_agent",
        "request_id",
        "created_at",
        "prev_hash",
        "hash",
    ]
    first = AuditEvent.objects.filter(org=org).count() + 1
    if first > 1:
        prev = AuditEvent.objects.filter(org=org).order_by("-sequence").values_list("hash", flat=True).first()
    with connection.cursor() as cursor:
        raw = cursor.cursor
        for batch_start in range(first, first + EVENTS, COPY_BATCH):
            with raw.copy(f"COPY audit_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
                for sequence in range(batch_start, min(batch_start + COPY_BATCH, first + EVENTS)):
                    event = AuditEvent(
                        uuid=uuid.uuid4(),
                        org=org,
                        sequence=sequence,
                        action=ACTIONS[sequence % len(ACTIONS)],
                        actor_type="user",
                        actor_id=str(uuid.UUID(int=sequence % 50)),
                        actor_label=f"user{sequence % 50}@acme.test",
                        target_type="team",
                        target_id=str(uuid.UUID(int=sequence % 200)),
                        target_label=f"=Team {sequence % 200}" if sequence % 97 == 0 else f"Team {sequence % 200}",
                        diff={"name": {"before": f"old {sequence}", "after": f"new {sequence}"}},
                        ip=f"203.0.113.{sequence % 250}",
                        user_agent="Mozilla/5.0 (X11; Linux x86_64) Gatehouse-bench",
                        request_id=uuid.uuid4().hex,
                        created_at=start + timedelta(milliseconds=sequence * 10),
                        prev_hash=prev,
                    )
                    event.hash = prev = event_hash(event)
                    copy.write_row(
                        (
                            event.uuid,
                            org.pk,
                            sequence,
                            event.action,
                            event.actor_type,
                            event.actor_id,
                            event.actor_label,
                            event.target_type,
                            event.target_id,
                            event.target_label,
                            json.dumps(event.diff),
                            event.ip,
                            event.user_agent,
                            event.request_id,
                            event.created_at,
                            event.prev_hash,
                            event.hash,
                        )
                    )
        cursor.execute("ANALYZE audit_auditevent")
    AuditChainHead.objects.update_or_create(chain=str(org.pk), defaults={"sequence": first + EVENTS - 1, "hash": prev})


def child(org_slug: str, export_format: str) -> None:
    """Export every event of the org in one format to /dev/null; print rows, seconds and peak RSS."""
    import django

    django.setup()
    from audit.export import export_events, export_lines
    from orgs.models import Organization

    org = Organization.objects.get(slug=org_slug)
    events = export_events(org, {})
    rows = -1 if export_format == "csv" else 0  # the CSV header is not a row
    began = time.perf_counter()
    with open(os.devnull, "w", encoding="utf-8") as sink:
        buffer = io.StringIO()
        for line in export_lines(events, export_format):
            rows += 1
            buffer.write(line)
            if rows % 2000 == 0:
                sink.write(buffer.getvalue())
                buffer = io.StringIO()
        sink.write(buffer.getvalue())
    seconds = time.perf_counter() - began
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_kb / 1024}))


def main() -> None:
    results = []
    with harness.throwaway_database():
        from audit.context import Actor
        from orgs.models import User
        from orgs.services import create_org

        owner = User.objects.create_user(email="owner@bench.test", password="bench-password-123")  # noqa: S106
        org = create_org(actor=Actor.system("bench"), name="Bench", slug="bench", owner=owner, require_mfa=False)
        began = time.perf_counter()
        seed_events(org)
        print(f"seeded {EVENTS:,} events in {time.perf_counter() - began:.0f}s", file=sys.stderr)
        for export_format in FORMATS:
            output = subprocess.run(  # noqa: S603
                [sys.executable, __file__, "--child", org.slug, export_format],
                check=True,
                capture_output=True,
                text=True,
                env=os.environ.copy(),
            ).stdout
            results.append((export_format, json.loads(output.strip().splitlines()[-1])))
    print(f"Audit export of {EVENTS:,} events (one org), through audit.export.export_lines into /dev/null\n")
    print("| format | rows | seconds | rows/s | peak RSS (MB) | target |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for export_format, figures in results:
        rate = figures["rows"] / figures["seconds"]
        met = rate >= TARGET_ROWS_PER_SECOND and figures["peak_mb"] < TARGET_RSS_MB
        print(
            f"| {export_format} | {figures['rows']:,} | {figures['seconds']:.1f} | {rate:,.0f} "
            f"| {figures['peak_mb']:.0f} | {'met' if met else 'MISSED'} (≥{TARGET_ROWS_PER_SECOND:,}/s, "
            f"<{TARGET_RSS_MB} MB) |"
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()

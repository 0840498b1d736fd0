"""Audit chain verification: one org with 1,000,000 chained events, walked by verify_chain.

Run: make bench BENCH=audit_verify (target: at least 100,000 events per second). Events are
generated with correct hashes (audit.services.canonical_encoding) and COPYed in: the product path,
record_event, is exercised by the tests; what is timed is the product's verify_chain.
"""

import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
RUNS = 3
TARGET = 100_000
COLUMNS = (
    "uuid, org_id, sequence, action, actor_type, actor_id, actor_label, target_type, target_id, target_label, "
    "diff, ip, user_agent, request_id, created_at, prev_hash, hash"
)


def seed_chain(org) -> None:
    import json

    from django.db import connection

    from audit.models import AuditChainHead, AuditEvent
    from audit.services import event_hash

    head = AuditChainHead.objects.get(chain=str(org.pk))
    previous, start = head.hash, head.sequence + 1
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY audit_auditevent ({COLUMNS}) FROM STDIN") as copy:
        for sequence in range(start, EVENTS + 1):
            event = AuditEvent(
                uuid=uuid.uuid4(),
                org_id=org.pk,
                sequence=sequence,
                action="team.updated",
                actor_type="user",
                actor_id=str(uuid.UUID(int=sequence % 50)),
                actor_label=f"admin{sequence % 50}@acme.test",
                target_type="team",
                target_id=str(sequence % 1000),
                target_label=f"Team {sequence % 1000}",
                diff={"name": {"before": f"Team {sequence - 1}", "after": f"Team {sequence}"}},
                ip="10.0.0.7",
                user_agent="Mozilla/5.0 (bench)",
                request_id=uuid.uuid4().hex,
                created_at=moment + timedelta(milliseconds=sequence),
                prev_hash=previous,
            )
            event.hash = event_hash(event)
            copy.write_row(
                (
                    event.uuid, event.org_id, sequence, event.action, event.actor_type, event.actor_id,
                    event.actor_label, event.target_type, event.target_id, event.target_label,
                    json.dumps(event.diff), event.ip, event.user_agent, event.request_id, event.created_at,
                    event.prev_hash, event.hash,
                )
            )  # fmt: skip
            previous = event.hash
    AuditChainHead.objects.filter(chain=str(org.pk)).update(sequence=EVENTS, hash=previous)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audit_auditevent")


def main() -> None:
    with harness.throwaway_database():
        from audit.context import Actor
        from audit.services import verify_chain
        from orgs.models import User
        from orgs.services import create_org

        owner = User.objects.create_user(email="owner@bench.test", password="x" * 20)
        org = create_org(actor=Actor.system("bench"), name="Bench", slug="bench", owner=owner, require_mfa=False)
        started = time.perf_counter()
        seed_chain(org)
        seeded = time.perf_counter() - started
        timings = []
        for _ in range(RUNS):
            started = time.perf_counter()
            result = verify_chain(org)
            timings.append(time.perf_counter() - started)
            if not (result.ok and result.checked == EVENTS):
                raise SystemExit(f"verification failed: {result}")
        best, median = min(timings), harness.median(timings)
        rate = EVENTS / median
        print(f"| Measure ({EVENTS:,} events, one org) | Result | Target |")
        print("|---|---|---|")
        print(f"| Seeding (generate + COPY) | {seeded:.1f} s | — |")
        print(f"| verify_chain, median of {RUNS} | {median:.2f} s | — |")
        print(f"| verify_chain, best of {RUNS} | {best:.2f} s | — |")
        verdict = "met" if rate >= TARGET else "MISSED"
        print(f"| Events verified per second (median) | {rate:,.0f} | ≥ {TARGET:,} ({verdict}) |")


if __name__ == "__main__":
    main()

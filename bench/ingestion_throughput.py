"""Ledger ingestion throughput: usage events from the Redis stream into PostgreSQL.

Run: make bench BENCH=ingestion_throughput. Appends EVENTS realistic usage events to the
stream (as gateway workers do, pipelined: every field of gateway/usage.py in its order, with
the deployment that answered and its one upstream attempt), then times `ingest_batch` draining
them into the ledger with rollups and last-used updates, as `manage.py ingest_usage --once`
does (`drain`: batches of BATCH, the next one read and parsed while the last is stored).
Three rounds; the median rate is reported.
"""

import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

EVENTS = 100_000
ROUNDS = 3
BATCH = 5000


def main() -> None:
    rates = []
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        from budgets.ingestion import drain
        from budgets.models import UsageRecord
        from fleet.redis_client import redis_client, redis_keys
        from gateway.usage import UsageEvent
        from keys.models import CallerKey
        from sla.models import Deployment

        org, team, _plaintexts = harness.seed("http://127.0.0.1:9", keys=20)
        keys = list(CallerKey.objects.filter(org=org).values_list("pk", flat=True))
        deployment = str(Deployment.objects.filter(org=org).values_list("pk", flat=True).get())
        attempt = {"deployment_id": deployment, "provider": "openai_compatible", "status": 200, "error_code": ""}
        client, stream = redis_client(), redis_keys().usage_stream
        for round_number in range(ROUNDS):
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for i in range(EVENTS):
                # Built by the gateway's own class, so the layout is the one workers write.
                event = UsageEvent(
                    uuid.uuid4().hex,
                    str(org.pk),
                    str(team.pk),
                    str(keys[i % len(keys)]),
                    "gpt-4o",
                    deployment_id=deployment,
                    input_tokens=120,
                    output_tokens=48,
                    cost_micros=780,
                    latency_ms=41.5,
                    ttft_ms=12.0,
                    node_id="bench",
                    ts=now + i / 1000,
                    attempts=[{**attempt, "latency_ms": 41.5}],
                    client_ip="203.0.113.7",
                    user_agent="OpenAI/Python 3.54.0",
                )
                pipe.xadd(stream, event.stream_fields())
                if i % 10_000 == 9_999:
                    pipe.execute()
            pipe.execute()
            started = time.perf_counter()
            ingested = drain("bench", BATCH, block_ms=None, once=True).inserted
            elapsed = time.perf_counter() - started
            if ingested != EVENTS:
                raise SystemExit(f"round {round_number + 1}: {ingested:,} of {EVENTS:,} events reached the ledger")
            rates.append(EVENTS / elapsed)
            print(f"round {round_number + 1}: {EVENTS:,} events in {elapsed:.2f} s", file=sys.stderr)
        total = UsageRecord.objects.filter(org=org).count()
        harness.wipe_redis_prefix()
    print(
        f"Ledger ingestion: {EVENTS:,} events per round, batches of {BATCH:,}, {ROUNDS} rounds "
        f"({total:,} ledger rows at the end)\n"
    )
    print("| median events per second | slowest round | fastest round |")
    print("|---|---|---|")
    print(f"| {harness.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} |")


if __name__ == "__main__":
    main()

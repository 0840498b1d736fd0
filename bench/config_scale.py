"""Config push at scale: an org with 100,000 caller keys and 1,000 teams.

Run: make bench BENCH=config_scale. Measures the full snapshot build (compile, sign,
store), a gateway worker's cold start (time to ready) and resident memory, and the size
and publish time of a one-key delta. Keys are bulk-inserted for the set-up (the product
path, issue_key, is exercised by the tests); everything measured is the product's code.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEYS = 100_000
TEAMS = 1_000


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        from audit.context import Actor
        from fleet import services
        from fleet.models import ConfigRevision
        from keys.models import CallerKey
        from keys.services import revoke_key

        org, team, _ = harness.seed("http://127.0.0.1:9", keys=1)
        harness.bulk_keys(org, team, keys=KEYS, teams=TEAMS)
        started = time.perf_counter()
        full = services.republish_all(actor=Actor.system("bench"), reason="scale benchmark")
        build_seconds = time.perf_counter() - started

        gateway_started = time.perf_counter()
        gateway, _url = harness.start_gateway("bench-scale", Path(tempfile.mkdtemp()))
        cold_start_seconds = time.perf_counter() - gateway_started
        rss = resident_mib(gateway.process.pid)

        key = CallerKey.objects.filter(org=org).first()
        started = time.perf_counter()
        revoke_key(actor=Actor.system("bench"), key=key)
        delta = services.publish_pending()
        delta_seconds = time.perf_counter() - started
        gateway.stop()
        if not ConfigRevision.objects.filter(number=delta.number, kind="delta").exists():
            raise RuntimeError("the revocation did not publish a delta")
        harness.wipe_redis_prefix()
    print(f"Config at scale: {KEYS:,} keys, {TEAMS:,} teams\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| full snapshot build, sign and store | {build_seconds:.2f} s |")
    print(f"| full snapshot size | {full.size / 1e6:.1f} MB |")
    print(f"| worker cold start to ready (process start, load, verify, index) | {cold_start_seconds:.2f} s |")
    print(f"| worker resident memory with the config loaded | {rss:.0f} MiB |")
    print(f"| one-key delta: size | {delta.size:,} bytes |")
    print(f"| one-key delta: revoke + compile + sign + publish | {delta_seconds * 1000:.1f} ms |")


if __name__ == "__main__":
    main()

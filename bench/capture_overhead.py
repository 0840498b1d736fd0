"""What content capture adds to a request: the same 4 KB prompt through one gateway worker with
a key of a team whose content is captured and with a key of a team whose content is not, side
by side in each round, and the simulator answering directly for reference.

Run: make bench BENCH=capture_overhead   (or: .venv/bin/python scripts/with_services.py
.venv/bin/python bench/capture_overhead.py). Prints a Markdown table for bench/RESULTS.md.

With capture on, the worker keeps the request body and the answer and seals them for the org
(gateway/capture.py: one AES-256-GCM pass; the X25519 exchange happens once per org and hour)
onto the usage event, which then carries about 5.5 KB more to Redis. Redaction happens later,
in ingestion, off the request path. Non-streaming, the simulator answering at once, 8 output
tokens. Figures are medians over rounds; "added by capture" is the captured key's p50 minus
the plain key's p50 in the same round.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import load

ROUNDS = 5
SECONDS = 5
CONCURRENCY = (1, 16)
PROMPT = ("The quarterly report lists revenue, costs and forecasts for each region. " * 60)[:4096]
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}


def seed(simulator_url: str) -> tuple[str, str]:
    """harness.seed's org and route, its team captured; a second team not: a key of each."""
    from audit.context import Actor
    from capture.services import set_team_capture
    from keys.services import issue_key
    from orgs.services import create_team

    system = Actor.system("bench")
    org, captured, (captured_key,) = harness.seed(simulator_url, rpm_limit=1_000_000, suffix="-capture")
    set_team_capture(actor=system, team=captured, capture="on")
    plain = create_team(actor=system, org=org, name="Plain")
    return issue_key(actor=system, team=plain, name="plain", rpm_limit=1_000_000)[1], captured_key


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        plain_key, captured_key = seed(simulator_url)
        from fleet import services

        services.publish_pending()
        gateway, gateway_url = harness.start_gateway("bench-capture", Path(tempfile.mkdtemp()))
        results: list[tuple] = []
        path = "/v1/chat/completions"
        try:
            for url, key in ((simulator_url, plain_key), (gateway_url, plain_key), (gateway_url, captured_key)):
                load.run_wrk(url, key, concurrency=16, seconds=3, body=BODY, path=path)  # warm up
            for concurrency in CONCURRENCY:
                runs: dict[str, list[load.LoadResult]] = {"direct": [], "plain": [], "captured": []}
                for _ in range(ROUNDS):
                    for name, url, key in (
                        ("direct", simulator_url, plain_key),
                        ("plain", gateway_url, plain_key),
                        ("captured", gateway_url, captured_key),
                    ):
                        result = load.run_wrk(url, key, concurrency=concurrency, seconds=SECONDS, body=BODY, path=path)
                        if result.bad_status or result.socket_errors:
                            raise RuntimeError(f"{name}: {result}")
                        runs[name].append(result)
                p50 = {name: harness.median([r.p50_ms for r in found]) for name, found in runs.items()}
                added = harness.median(
                    [c.p50_ms - p.p50_ms for p, c in zip(runs["plain"], runs["captured"], strict=True)]
                )
                rps = {name: harness.median([r.rps for r in found]) for name, found in runs.items()}
                results.append(
                    (concurrency, p50["direct"], p50["plain"], p50["captured"], added, rps["plain"], rps["captured"])
                )
        finally:
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    print(
        f"Content capture overhead, 4 KB prompt, medians of {ROUNDS} rounds of {SECONDS} s each (ms; load from wrk)\n"
    )
    print(
        "| concurrency | direct p50 | gateway p50, not captured | gateway p50, captured | added by capture p50 "
        "| requests/s not captured | requests/s captured |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in results:
        print("| {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.0f} | {:.0f} |".format(*row))


if __name__ == "__main__":
    main()

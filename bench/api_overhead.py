"""Overhead of each inbound API: chat completions, the Responses API and Anthropic's Messages
API, passed through and translated, each measured side by side with the simulator answering
the same API directly.

Run: make bench BENCH=api_overhead   (or: .venv/bin/python scripts/with_services.py
.venv/bin/python bench/api_overhead.py). Prints a Markdown table for bench/RESULTS.md.

One gateway worker process (auth, an RPM limit in Redis, usage events on) serves three routes
at the simulator: `gpt-4o` on an OpenAI credential, `claude` on an Anthropic credential. Rows:

- chat completions: gateway `/v1/chat/completions` (gpt-4o) vs the simulator's own;
- responses, native: gateway `/v1/responses` to the OpenAI credential (passed through) vs the
  simulator's `/v1/responses`;
- responses, translated: gateway `/v1/responses` to the Anthropic credential (Responses ->
  chat -> Messages and back) vs the simulator's `/v1/responses`;
- messages, native: gateway `/v1/messages` to the Anthropic credential (passed through) vs the
  simulator's `/v1/messages`;
- messages, translated: gateway `/v1/messages` to the OpenAI credential vs the simulator's
  `/v1/messages`.

Non-streaming, the simulator answering at once, 8 output tokens. Figures are medians over
rounds; "added" is the gateway's latency minus the direct call's in the same round.
"""

import sys
import tempfile
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import load

ROUNDS = 3
SECONDS = 5
CONCURRENCY = (1, 16)
HELLO = [{"role": "user", "content": "Say hello"}]
BODIES = {
    "/v1/chat/completions": lambda model: {"model": model, "messages": HELLO, "max_tokens": 8},
    "/v1/responses": lambda model: {"model": model, "input": "Say hello", "max_output_tokens": 8},
    "/v1/messages": lambda model: {"model": model, "messages": HELLO, "max_tokens": 8},
}
# (row, API path, the gateway's alias, the simulator's model for the direct call)
ROWS = (
    ("chat completions", "/v1/chat/completions", "gpt-4o", "gpt-4o"),
    ("responses, native", "/v1/responses", "gpt-4o", "gpt-4o"),
    ("responses, translated", "/v1/responses", "claude", "gpt-4o"),
    ("messages, native", "/v1/messages", "claude", "claude-sonnet-4"),
    ("messages, translated", "/v1/messages", "gpt-4o", "claude-sonnet-4"),
)


def seed(simulator_url: str) -> str:
    from audit.context import Actor
    from keys.services import create_credential, issue_key
    from orgs.models import User
    from orgs.services import create_org, create_team
    from sla.services import create_deployment, create_route

    system = Actor.system("bench")
    owner = User.objects.create_user(email="bench-api@bench.test", password=None)
    org = create_org(actor=system, name="Bench", slug="bench-api", owner=owner, require_mfa=False)
    team = create_team(actor=system, org=org, name="Bench team")
    for alias, provider, base, model in (
        ("gpt-4o", "openai", f"{simulator_url}/v1", "gpt-4o"),
        ("claude", "anthropic", simulator_url, "claude-sonnet-4"),
    ):
        credential = create_credential(
            actor=system, org=org, name=provider, provider=provider, base_url=base, secrets={"api_key": "sk-bench-0"}
        )
        deployment = create_deployment(
            actor=system,
            org=org,
            name=alias,
            credential=credential,
            upstream_model=model,
            input_price_per_mtok=Decimal("2.5"),
            output_price_per_mtok=Decimal("10"),
        )
        create_route(actor=system, org=org, alias=alias, deployments=[deployment])
    return issue_key(actor=system, team=team, name="bench", rpm_limit=1_000_000)[1]


def main() -> None:
    with harness.throwaway_database():
        harness.wipe_redis_prefix()
        simulator, simulator_url = harness.start_simulator()
        key = seed(simulator_url)
        from fleet import services

        services.publish_pending()
        gateway, gateway_url = harness.start_gateway("bench-api", Path(tempfile.mkdtemp()))
        results: list[tuple] = []
        try:
            for _name, path, alias, model in ROWS:  # warm connections, caches and the breaker window
                for url, body in ((simulator_url, BODIES[path](model)), (gateway_url, BODIES[path](alias))):
                    load.run_wrk(url, key, concurrency=16, seconds=2, body=body, path=path)
            for concurrency in CONCURRENCY:
                for name, path, alias, model in ROWS:
                    direct: list[load.LoadResult] = []
                    through: list[load.LoadResult] = []
                    for _ in range(ROUNDS):
                        for runs, url, body in (
                            (direct, simulator_url, BODIES[path](model)),
                            (through, gateway_url, BODIES[path](alias)),
                        ):
                            result = load.run_wrk(
                                url, key, concurrency=concurrency, seconds=SECONDS, body=body, path=path
                            )
                            if result.bad_status or result.socket_errors:
                                raise RuntimeError(f"{name} at {url}: {result}")
                            runs.append(result)
                    p50 = [harness.median([r.p50_ms for r in runs]) for runs in (direct, through)]
                    p99 = [harness.median([r.p99_ms for r in runs]) for runs in (direct, through)]
                    rps = harness.median([r.rps for r in through])
                    results.append((concurrency, name, p50[0], p50[1], p50[1] - p50[0], p99[1] - p99[0], rps))
        finally:
            gateway.stop()
            simulator.stop()
            harness.wipe_redis_prefix()
    print(f"Overhead by inbound API, medians of {ROUNDS} rounds of {SECONDS} s each (ms; load from wrk)\n")
    print("| concurrency | API | direct p50 | gateway p50 | added p50 | added p99 | gateway requests/s |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        print("| {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.0f} |".format(*row))


if __name__ == "__main__":
    main()

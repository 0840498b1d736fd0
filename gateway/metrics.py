"""Prometheus metrics of one worker process, and who may read them.

Requests, latency and tokens are labelled by model alias and deployment. Only values the config
defines become labels: a model the caller's org has no route for is counted as `other`, and a
request refused before any deployment was tried has deployment `none`, so callers cannot grow
the number of series by sending made-up model names. The hot path takes its label children
from small dicts keyed by plain tuples instead of calling `.labels()` (which converts and
checks every value under a lock). Children of aliases or deployments removed from the config
stay until the process restarts; there are at most as many as the config ever named.
"""

import asyncio
import functools
import hmac
import ipaddress
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .config import GatewayConfig
from .http import Request

registry = CollectorRegistry()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OTHER_MODEL = "other"  # a model name no route of the caller's org defines, or none was read
NO_DEPLOYMENT = "none"  # refused before any deployment was tried

requests = Counter(
    "gateway_requests",
    "Requests answered, by endpoint, model alias, deployment and HTTP status",
    ["endpoint", "model", "deployment", "status"],
    registry=registry,
)
errors = Counter("gateway_errors", "Requests that ended in an error, by code", ["code"], registry=registry)
latency = Histogram(
    "gateway_request_seconds",
    "Whole latency of requests a provider answered, by model alias",
    ["model"],
    buckets=LATENCY_BUCKETS,
    registry=registry,
)
upstream_latency = Histogram(
    "gateway_upstream_seconds",
    "Time to the upstream's first byte, by deployment",
    ["deployment"],
    buckets=LATENCY_BUCKETS,
    registry=registry,
)
tokens = Counter(
    "gateway_tokens",
    "Tokens processed, by direction, model alias and deployment",
    ["direction", "model", "deployment"],
    registry=registry,
)
config_revision = Gauge("gateway_config_revision", "Config revision this worker runs", registry=registry)
usage_flush_errors = Counter(
    "gateway_usage_flush_errors", "Failed flushes of usage events to Redis (retried)", registry=registry
)
capture_failures = Counter(
    "gateway_capture_failures",
    "Requests whose content could not be sealed for capture (sent without it)",
    registry=registry,
)
usage_dropped = Counter(
    "gateway_usage_dropped", "Usage events dropped after the outage buffer filled", registry=registry
)
usage_buffered = Gauge(
    "gateway_usage_buffered", "Usage events waiting for Redis (spooled to disk during an outage)", registry=registry
)
loop_lag = Histogram(
    "gateway_event_loop_lag_seconds",
    "How late the event loop ran a timer due every LOOP_LAG_INTERVAL: time it could not answer anyone",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
    registry=registry,
)
LOOP_LAG_INTERVAL = 0.01


async def watch_loop_lag() -> None:
    """Measures how long the event loop was held (a parse, a GIL held by a thread, a long
    callback) by how late a timer fires; about 100 wake-ups a second, a few µs each."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LOOP_LAG_INTERVAL
        await asyncio.sleep(LOOP_LAG_INTERVAL)
        loop_lag.observe(max(0.0, loop.time() - due))


_request_children: dict[tuple[str, str, str, int], Counter] = {}
_error_children: dict[str, Counter] = {}
_answer_children: dict[tuple[str, str], tuple[Histogram, Counter, Counter]] = {}
_upstream_children: dict[str, Histogram] = {}


def model_label(config: GatewayConfig | None, org_id: str, alias: str) -> str:
    """The alias when the caller's org routes it, else `other`."""
    if config is not None and (org_id, alias) in config.routes_by_alias:
        return alias
    return OTHER_MODEL


def count_request(endpoint: str, model: str, deployment: str, status: int) -> None:
    """One answered request; `model` must come from the config (see model_label)."""
    key = (endpoint, model, deployment, status)
    child = _request_children.get(key)
    if child is None:
        child = requests.labels(endpoint, model, deployment or NO_DEPLOYMENT, str(status))
        _request_children[key] = child
    child.inc()


def count_error(code: str) -> None:
    """One error by its code (the gateway's own codes: a fixed set)."""
    child = _error_children.get(code)
    if child is None:
        child = _error_children[code] = errors.labels(code)
    child.inc()


def observe_answer(model: str, deployment: str, seconds: float, input_tokens: int, output_tokens: int) -> None:
    """Latency and tokens of a request a deployment answered."""
    key = (model, deployment)
    children = _answer_children.get(key)
    if children is None:
        children = (
            latency.labels(model),
            tokens.labels("input", model, deployment),
            tokens.labels("output", model, deployment),
        )
        _answer_children[key] = children
    children[0].observe(seconds)
    children[1].inc(input_tokens)
    children[2].inc(output_tokens)


def observe_upstream(deployment: str, seconds: float) -> None:
    child = _upstream_children.get(deployment)
    if child is None:
        child = _upstream_children[deployment] = upstream_latency.labels(deployment)
    child.observe(seconds)


# Who may scrape ------------------------------------------------------------------------------


@functools.cache
def scrape_token() -> str:
    """GATEHOUSE_METRICS_TOKEN (or the file GATEHOUSE_METRICS_TOKEN_FILE names), as the portal."""
    path = os.environ.get("GATEHOUSE_METRICS_TOKEN_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get("GATEHOUSE_METRICS_TOKEN", "").strip()


def scrape_allowed(request: Request) -> bool:
    """With a token configured, a request bearing it. Without one, a loopback client that came
    through no proxy: a proxy on the same host makes every client look local, and it announces
    itself with X-Forwarded-For or Forwarded."""
    token = scrape_token()
    if token:
        scheme, _, given = request.header(b"authorization").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    if request.header(b"x-forwarded-for") or request.header(b"forwarded"):
        return False
    client = request.scope.get("client")
    try:
        return client is not None and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False

"""Prometheus metrics of one worker process."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

requests = Counter("gateway_requests", "Requests answered", ["endpoint", "status"], registry=registry)
errors = Counter("gateway_errors", "Requests that ended in an error, by code", ["code"], registry=registry)
latency = Histogram("gateway_request_seconds", "Whole request latency", buckets=LATENCY_BUCKETS, registry=registry)
upstream_latency = Histogram(
    "gateway_upstream_seconds", "Time to the upstream's first byte", buckets=LATENCY_BUCKETS, registry=registry
)
tokens = Counter("gateway_tokens", "Tokens processed", ["direction"], registry=registry)
input_tokens, output_tokens = tokens.labels("input"), tokens.labels("output")
config_revision = Gauge("gateway_config_revision", "Config revision this worker runs", registry=registry)
usage_flush_errors = Counter(
    "gateway_usage_flush_errors", "Failed flushes of usage events to Redis (retried)", registry=registry
)
usage_dropped = Counter(
    "gateway_usage_dropped", "Usage events dropped after the outage buffer filled", registry=registry
)
usage_buffered = Gauge(
    "gateway_usage_buffered", "Usage events waiting for Redis (spooled to disk during an outage)", registry=registry
)

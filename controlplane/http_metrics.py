"""Request counts, latency and server errors of the portal, by route.

Labels are the URL pattern's name (`resolver_match.view_name`, e.g. `api:keys:key-list`),
never the path, so ids in URLs do not make a series each; a request no pattern matched is
`unmatched`. Methods outside the standard set are `other`. Under gunicorn the values live in
prometheus_client's multiprocess files (controlplane/prometheus_files.py), so /metrics sums
every worker; elsewhere (runserver, tests) in this process's `registry`.
"""

import time

from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Counter, Histogram

registry = CollectorRegistry()
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

requests = Counter(
    "gatehouse_http_requests",
    "Portal and API requests answered, by method, route name and status class",
    ["method", "route", "status"],
    registry=registry,
)
latency = Histogram(
    "gatehouse_http_request_seconds",
    "Portal and API request latency, by route name",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=registry,
)
server_errors = Counter(
    "gatehouse_http_server_errors",
    "Portal and API requests answered with a 5xx status, by route name",
    ["route"],
    registry=registry,
)


def route_of(request: HttpRequest) -> str:
    match = request.resolver_match
    return match.view_name if match is not None else "unmatched"


class HttpMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        route = route_of(request)
        method = request.method if request.method in METHODS else "other"
        requests.labels(method, route, f"{response.status_code // 100}xx").inc()
        latency.labels(route).observe(time.perf_counter() - started)
        if response.status_code >= 500:
            server_errors.labels(route).inc()
        return response

"""The portal's Prometheus endpoint, `/metrics`: request metrics and the pipeline's gauges.

Who may read it: with `GATEHOUSE_METRICS_TOKEN` set, a request bearing
`Authorization: Bearer <token>`; without one, only a loopback client that came through no
proxy (a proxy on the same host would make every client look local; it announces itself with
X-Forwarded-For or Forwarded). The gateway's /metrics follows the same rule
(gateway/metrics.py). Others get 403.
"""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from . import http_metrics, prometheus_files

# The gauges read at scrape time. Apps register their collectors here when they load
# (budgets/apps.py: budgets/pipeline_metrics.py), so this project module imports no app.
pipeline_registry = CollectorRegistry()


def scrape_allowed(request: HttpRequest) -> bool:
    token = settings.GATEHOUSE_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def exposition() -> bytes:
    """Request metrics (every gunicorn worker's, in multiprocess mode), then the gauges."""
    directory = prometheus_files.directory()
    if directory is None:
        requests = generate_latest(http_metrics.registry)
    else:
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, str(directory))
        with prometheus_files.reading(directory):
            requests = generate_latest(merged)
    return requests + generate_latest(pipeline_registry)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        return HttpResponse(
            "Metrics need the metrics token (GATEHOUSE_METRICS_TOKEN), or a loopback client.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)

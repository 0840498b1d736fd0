"""Health endpoints for load balancers and orchestrators, and JSON errors for the API.

`/healthz` says the process is alive and answering (no dependency is checked, so a database
outage does not get every portal process restarted). `/readyz` says it can serve: PostgreSQL
answers, Redis answers, and no migration is pending; a 503 names what is not ready.
"""

import logging

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.defaults import page_not_found, server_error

from gateway.redis_url import sync_client

log = logging.getLogger("controlplane.health")
_migrated = False  # once true it stays true: migrations are not unapplied under a running process


@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def _database() -> str | None:
    global _migrated
    try:
        connection = connections[DEFAULT_DB_ALIAS]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not _migrated:
            executor = MigrationExecutor(connection)
            if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                return "migrations are pending: run manage.py migrate"
            _migrated = True
    except Exception as error:  # any failure means not ready; the reason is logged, not shown
        log.warning("readyz: PostgreSQL is not ready: %s", error)
        return "PostgreSQL cannot be reached"
    return None


def _redis(url: str, name: str) -> str | None:
    # A connection of its own, not fleet's shared client: controlplane sits below the apps.
    client = sync_client(url, timeout=2, connect_timeout=2)
    try:
        client.ping()
    except Exception as error:
        log.warning("readyz: %s is not ready: %s", name, error)
        return f"{name} cannot be reached"
    finally:
        client.close()
    return None


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"postgresql": _database(), "redis": _redis(settings.REDIS_URL, "Redis")}
    if settings.GATEHOUSE_BROKER_REDIS_URL != settings.REDIS_URL:
        checks["broker"] = _redis(settings.GATEHOUSE_BROKER_REDIS_URL, "The Celery broker's Redis")
    failing = {name: reason for name, reason in checks.items() if reason}
    body = {"ready": not failing, "checks": {name: failing.get(name, "ok") for name in checks}}
    return JsonResponse(body, status=503 if failing else 200)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: JSON under /api/, the page elsewhere."""
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)


def failed(request: HttpRequest) -> HttpResponse:
    """handler500: JSON under /api/, the page elsewhere. Never the error itself."""
    if _is_api(request):
        return JsonResponse({"detail": "The server failed on this request; it has been logged."}, status=500)
    return server_error(request)

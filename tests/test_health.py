"""The portal's health endpoints and JSON errors under /api/ (issue 11, observation 8)."""

import json

import pytest
from django.db import connection
from django.test import Client, RequestFactory
from django.urls import get_resolver

from tests.plugins.gateway_workers import free_port


def test_ready_when_postgresql_and_redis_answer_and_nothing_is_unmigrated(db):
    answer = Client().get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"ready": True, "checks": {"postgresql": "ok", "redis": "ok"}}
    assert "no-cache" in answer["Cache-Control"]


def test_not_ready_without_redis_but_still_alive(db, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.GATEHOUSE_BROKER_REDIS_URL = settings.REDIS_URL  # the broker is the same server
    answer = Client().get("/readyz")
    alive = Client().get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["checks"] == {"postgresql": "ok", "redis": "Redis cannot be reached"}
    assert (alive.status_code, alive.content) == (200, b"ok")


def test_a_broker_of_its_own_is_checked_too(db, settings):
    settings.GATEHOUSE_BROKER_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # GATEHOUSE_BROKER_URL, down
    answer = Client().get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"] == {
        "postgresql": "ok",
        "redis": "ok",
        "broker": "The Celery broker's Redis cannot be reached",
    }


@pytest.mark.django_db(transaction=True)
def test_not_ready_without_postgresql(settings):
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(free_port())  # the database is gone
    try:
        answer = Client().get("/readyz")
        alive = Client().get("/healthz")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert answer.status_code == 503
    assert answer.json()["checks"]["postgresql"] == "PostgreSQL cannot be reached"
    assert alive.status_code == 200


def test_api_errors_are_json_even_when_debug_is_off(db, settings):
    settings.DEBUG = False
    missing = Client().get("/api/v1/no-such-thing/")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/json"
    assert missing.json() == {"detail": "Not found."}
    failed = get_resolver().resolve_error_handler(500)
    answer = failed(RequestFactory().get("/api/v1/orgs/"))
    assert answer.status_code == 500 and answer["Content-Type"] == "application/json"
    assert "detail" in json.loads(answer.content)
    page = failed(RequestFactory().get("/orgs/"))  # pages keep their HTML error page
    assert page.status_code == 500 and not page["Content-Type"].startswith("application/json")

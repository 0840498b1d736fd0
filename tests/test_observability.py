"""Production serving and observability of the control plane (issue 11, observation 11):
JSON logs with the request id (portal, Celery), no secret in a log line, the portal's /metrics
and who may read it, gunicorn serving the portal, and the Grafana dashboard's metric names."""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils.module_loading import import_string
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from audit.context import RequestMeta, request_meta
from budgets import dead_letters
from budgets import pipeline_metrics as scrape_gauges
from budgets.ingestion import GROUP
from controlplane.celery import app as celery_app
from controlplane.http_metrics import HttpMetricsMiddleware
from controlplane.logs import process_role
from fleet.redis_client import redis_client, redis_keys
from fleet.services import publish_pending
from gateway import logs as gateway_logs
from gateway import metrics as gateway_metrics
from keys.services import issue_key
from tests.plugins.gateway_workers import ROOT, free_port
from tests.plugins.ingestion_process import ledger_database_url

CANARY = "sk-canary-logs-7e3a9c1d5b2f"
DASHBOARD = ROOT / "deploy" / "grafana" / "gatehouse.json"


# Helpers ------------------------------------------------------------------------------------


class CapturedLog:
    def __init__(self, stream: io.StringIO):
        self.stream = stream

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]


@pytest.fixture
def json_log():
    """What the console handler of settings.LOGGING writes, built from the same dotted names and
    attached to the root logger for the test."""
    config = settings.LOGGING
    assert config["handlers"]["console"]["formatter"] == "json"  # the default outside development
    assert config["handlers"]["console"]["filters"] == ["request_context"]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(import_string(config["formatters"]["json"]["()"])())
    handler.addFilter(import_string(config["filters"]["request_context"]["()"])())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield CapturedLog(stream)
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def redis_down(settings):
    """REDIS_URL at a port nothing listens on, for the portal and fleet's shared client alike."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.GATEHOUSE_BROKER_REDIS_URL = settings.REDIS_URL  # the broker is the same server
    redis_client.cache_clear()
    scrape_gauges._failing.clear()
    yield
    redis_client.cache_clear()
    scrape_gauges._failing.clear()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def scrape(client: Client | None = None) -> dict[tuple[str, frozenset], float]:
    answer = (client or Client()).get("/metrics")
    assert answer.status_code == 200
    return samples(answer.content.decode())


def value(found: dict, metric: str, **labels: str) -> float:
    return found.get((metric, frozenset(labels.items())), 0.0)


# Logs ---------------------------------------------------------------------------------------


def test_a_log_line_of_a_request_carries_the_request_id_the_response_names(db, json_log):
    answer = Client().get("/no-such-page/", HTTP_X_REQUEST_ID="obs-request-1")
    assert answer.status_code == 404
    assert answer["X-Request-ID"] == "obs-request-1"
    [line] = [line for line in json_log.lines() if line["logger"] == "django.request"]
    assert line["request_id"] == "obs-request-1"
    assert (line["level"], line["message"]) == ("WARNING", "Not Found: /no-such-page/")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert {"role", "pid"} <= set(line)


def test_a_line_logged_inside_a_view_carries_the_generated_request_id(db, redis_down, json_log):
    answer = Client().get("/metrics")
    [line] = [line for line in json_log.lines() if line["logger"] == "controlplane.metrics"]
    assert line["request_id"] == answer["X-Request-ID"]
    assert len(answer["X-Request-ID"]) == 32
    assert line["message"].startswith("metrics: redis cannot be read")


@celery_app.task(name="tests.observability.log_a_line", ignore_result=True)
def log_a_line(marker: str) -> None:
    logging.getLogger("tests.observability").warning("task line %s", marker)


@pytest.mark.django_db(transaction=True)  # the worker checks the models at start
def test_a_task_logs_with_its_task_id_and_the_portal_request_that_enqueued_it(celery_worker_on_test_queue, json_log):
    marker = uuid.uuid4().hex
    token = request_meta.set(RequestMeta(request_id="portal-request-7"))
    try:
        result = log_a_line.delay(marker)
    finally:
        request_meta.reset(token)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = [line for line in json_log.lines() if line["message"] == f"task line {marker}"]
        if lines:
            break
        time.sleep(0.05)
    assert lines, json_log.text()[-2000:]
    assert lines[0]["request_id"] == result.id
    assert lines[0]["task"] == "tests.observability.log_a_line"
    assert lines[0]["parent_request_id"] == "portal-request-7"


def test_the_celery_worker_logs_through_django_logging():
    from celery import signals

    from controlplane.celery import use_django_logging

    # Connected, Celery leaves the root logger to settings.LOGGING (no handler of its own).
    assert use_django_logging in [receiver() for _, receiver in signals.setup_logging.receivers]


def test_secrets_never_reach_the_logs(client_for, org, team, fresh_key_ring, provider_simulator, json_log):
    client = client_for("admin")
    path = reverse("api:keys:credential-list", args=["acme"])
    body = {
        "name": "Logged",
        "provider": "openai_compatible",
        "base_url": f"{provider_simulator.url}/v1",
        "secrets": {"api_key": CANARY},
    }
    created = client.post(path, body, content_type="application/json")
    assert created.status_code == 201
    refused = client.post(path, {**body, "base_url": "file:///etc/passwd"}, content_type="application/json")
    assert refused.status_code == 400
    provider_simulator.configure(rejected_keys=[CANARY])
    tested = client.post(reverse("api:keys:credential-test", args=["acme", created.json()["id"]]))
    assert tested.json()["ok"] is False
    # A careless line, as a bug would write it: the formatter masks credential shapes and the
    # configured secrets as a last line of defence.
    logging.getLogger("keys").warning("the provider refused %s (Authorization: Bearer %s)", CANARY, CANARY)
    logging.getLogger("keys").warning("signing with %s", settings.SECRET_KEY)
    text = json_log.text()
    assert any(line["logger"] == "django.request" for line in json_log.lines())  # the 400 was logged
    assert CANARY[:-4] not in text
    assert settings.SECRET_KEY not in text
    assert text.count("[redacted]") >= 3


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/srv/.venv/bin/gunicorn", "-c", "controlplane/gunicorn.conf.py", "controlplane.wsgi"], "web"),
        (["/srv/.venv/lib/python3.11/site-packages/gunicorn/__main__.py", "controlplane.wsgi"], "web"),
        (["/srv/.venv/bin/celery", "-A", "controlplane", "worker", "-Q", "publish"], "worker"),
        (["/srv/.venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "controlplane", "beat"], "beat"),
        (["manage.py", "ingest_usage"], "ingestion"),
        (["manage.py", "runserver"], "web"),
    ],
)
def test_the_role_of_a_process_is_read_from_its_command_line(argv, role, monkeypatch):
    monkeypatch.delenv("GATEHOUSE_PROCESS_ROLE", raising=False)
    assert process_role(argv) == role


def test_the_gateway_formatter_writes_one_json_object_with_the_server_request_id():
    try:
        raise RuntimeError("upstream said Bearer sk-live-abcdefghijklmnop")
    except RuntimeError:
        record = logging.getLogger("gateway").makeRecord(
            "gateway", logging.ERROR, __file__, 1, "request %s failed", ("abc123",), sys.exc_info(),
            extra={"request_id": "abc123"},
        )  # fmt: skip
    line = gateway_logs.JsonFormatter("gateway").format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert (document["request_id"], document["role"], document["message"]) == (
        "abc123",
        "gateway",
        "request abc123 failed",
    )
    assert "RuntimeError" in document["exception"] and "sk-live-abcdefghijklmnop" not in line


@pytest.mark.parametrize(
    ("environ", "chosen"),
    [
        ({}, "json"),
        ({"DJANGO_DEBUG": "1"}, "text"),
        ({"GATEHOUSE_LOG_FORMAT": "text"}, "text"),
        ({"GATEHOUSE_LOG_FORMAT": "text", "GATEWAY_LOG_FORMAT": "json"}, "json"),
    ],
)
def test_the_gateway_log_format_follows_the_environment(environ, chosen):
    assert gateway_logs.log_format(environ) == chosen


def test_an_unknown_log_format_is_refused_at_start():
    env = {**os.environ, "DJANGO_DEBUG": "1", "GATEHOUSE_LOG_FORMAT": "xml"}
    env.pop("PYTEST_VERSION", None)
    check = subprocess.run(
        [sys.executable, "-c", "import controlplane.settings"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert check.returncode != 0
    assert "GATEHOUSE_LOG_FORMAT must be json or text" in check.stderr


# Metrics: who may read them -----------------------------------------------------------------

TOKEN = "metrics-token-8c2e41f0a9d34b7e"


@pytest.mark.parametrize(
    ("token", "address", "headers", "status"),
    [
        ("", "127.0.0.1", {}, 200),
        ("", "::1", {}, 200),
        ("", "10.0.0.5", {}, 403),
        ("", "127.0.0.1", {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, 403),  # a proxy on the same host
        (TOKEN, "10.0.0.5", {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}, 200),
        (TOKEN, "10.0.0.5", {}, 403),
        (TOKEN, "127.0.0.1", {}, 403),  # with a token, loopback alone is not enough
        (TOKEN, "10.0.0.5", {"HTTP_AUTHORIZATION": "Bearer wrong-token"}, 403),
    ],
)
def test_who_may_read_metrics(db, settings, token, address, headers, status):
    settings.GATEHOUSE_METRICS_TOKEN = token
    answer = Client(REMOTE_ADDR=address).get("/metrics", **headers)
    assert answer.status_code == status
    assert (b"gatehouse_dependency_up" in answer.content) == (status == 200)


# Metrics: what they say ---------------------------------------------------------------------


def test_requests_are_counted_by_route_name_never_by_path(db):
    before = scrape()
    Client().get("/healthz")
    Client().get("/healthz")
    Client().get("/no-such-page/6f1c1f4e-0000-4000-8000-000000000000/")
    answer = Client().get("/metrics")
    after = samples(answer.content.decode())
    requests = "gatehouse_http_requests_total"
    healthz = {"method": "GET", "route": "healthz", "status": "2xx"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "4xx"}
    assert value(after, requests, **healthz) - value(before, requests, **healthz) == 2
    assert value(after, requests, **unmatched) - value(before, requests, **unmatched) == 1
    seconds = "gatehouse_http_request_seconds_count"
    assert value(after, seconds, route="healthz") - value(before, seconds, route="healthz") == 2
    assert b"6f1c1f4e" not in answer.content


def test_server_errors_are_counted_by_route(db):
    def failed(request):
        return HttpResponse(status=503)

    before = scrape()
    HttpMetricsMiddleware(failed)(RequestFactory().generic("BREW", "/coffee"))
    after = scrape()
    errors = "gatehouse_http_server_errors_total"
    assert value(after, errors, route="unmatched") - value(before, errors, route="unmatched") == 1
    requests = "gatehouse_http_requests_total"
    labels = {"method": "other", "route": "unmatched", "status": "5xx"}  # a method outside the set
    assert value(after, requests, **labels) - value(before, requests, **labels) == 1


def test_metrics_answer_with_redis_down_and_say_so(db, redis_down):
    found = scrape()
    assert value(found, "gatehouse_dependency_up", name="redis") == 0
    assert value(found, "gatehouse_dependency_up", name="postgresql") == 1
    assert ("gatehouse_config_pending_changes", frozenset()) in found  # PostgreSQL's gauges stay
    assert not [key for key in found if key[0] == "gatehouse_celery_queue_length"]


@pytest.mark.django_db(transaction=True)
def test_metrics_answer_with_postgresql_down_and_say_so():
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(free_port())  # the database is gone
    try:
        found = scrape()
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert value(found, "gatehouse_dependency_up", name="postgresql") == 0
    assert value(found, "gatehouse_dependency_up", name="redis") == 1
    assert ("gatehouse_usage_stream_length", frozenset()) in found  # Redis's gauges stay
    assert not [key for key in found if key[0] == "gatehouse_config_pending_changes"]
    scrape_gauges._failing.clear()


def test_the_publish_gauges_follow_a_change_until_it_is_published(org, team, actors, clean_redis):
    issue_key(actor=actors["admin"], team=team, name="metrics")
    pending = scrape()
    assert value(pending, "gatehouse_config_pending_changes") >= 1
    assert value(pending, "gatehouse_config_unpublished_seconds") >= 0
    revision = publish_pending()
    published = scrape()
    assert value(published, "gatehouse_config_pending_changes") == 0
    assert value(published, "gatehouse_config_unpublished_seconds") == 0
    assert value(published, "gatehouse_config_newest_revision") == revision.number
    assert value(published, "gatehouse_config_published_revision") == revision.number


def test_the_ingestion_gauges_give_pending_events_and_the_age_of_the_oldest(db, clean_redis):
    stream, now_ms = redis_keys().usage_stream, int(time.time() * 1000)
    for seconds_ago in (300, 120, 60):
        clean_redis.xadd(stream, {"request_id": "x"}, id=f"{now_ms - seconds_ago * 1000}-0")
    never_read = scrape()  # no consumer group yet: everything waits
    assert value(never_read, "gatehouse_usage_stream_length") == 3
    assert 299 < value(never_read, "gatehouse_usage_lag_seconds") < 400
    clean_redis.xgroup_create(stream, GROUP, id="0")
    clean_redis.xreadgroup(GROUP, "ingest-test", {stream: ">"}, count=2)  # two delivered, unacknowledged
    delivered = scrape()
    assert value(delivered, "gatehouse_usage_pending") == 2
    assert 299 < value(delivered, "gatehouse_usage_lag_seconds") < 400
    first, second = (entry_id for entry_id, _ in clean_redis.xrange(stream, count=2))
    clean_redis.xack(stream, GROUP, first, second)
    stored = scrape()  # the oldest not stored now is the undelivered one, a minute old
    assert value(stored, "gatehouse_usage_pending") == 0
    assert 59 < value(stored, "gatehouse_usage_lag_seconds") < 120


def test_the_dead_letter_and_queue_gauges(db, settings, clean_redis):
    settings.CELERY_TASK_DEFAULT_QUEUE = queue = f"gatehouse-test-metrics-{uuid.uuid4().hex[:8]}"
    try:
        clean_redis.lpush(queue, b"one", b"two")
        clean_redis.lpush(queue + "\x06\x169", b"urgent")  # kombu's list for priority 9
        clean_redis.xadd(dead_letters.stream_name(), {"dead_letter.reason": "test"})
        clean_redis.incrby(dead_letters.counter_name(), 4)
        found = scrape()
    finally:
        clean_redis.delete(queue, queue + "\x06\x169")
    assert value(found, "gatehouse_celery_queue_length", queue=queue) == 3
    publish_queue = getattr(settings, "GATEHOUSE_PUBLISH_QUEUE", "publish")
    assert ("gatehouse_celery_queue_length", frozenset({("queue", publish_queue)})) in found
    assert value(found, "gatehouse_dead_letters") == 1
    assert value(found, "gatehouse_dead_letters_set_aside_total") == 4


# gunicorn -----------------------------------------------------------------------------------


def wait_until(condition, timeout: float = 30, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-3000:] if log else ''}")
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"not met in {timeout} s: {log.read_text()[-3000:] if log else ''}")


@pytest.mark.django_db(transaction=True)
def test_gunicorn_serves_the_portal_and_its_metrics_outlive_its_workers(tmp_path, fresh_key_ring):
    port, metrics_dir, log = free_port(), tmp_path / "prometheus", tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": ledger_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "GATEHOUSE_REDIS_PREFIX": settings.GATEHOUSE_REDIS_PREFIX,
        **{f"GATEHOUSE_KEK_{version}": key for version, key in settings.GATEHOUSE_KEK_RING.items()},
        "GATEHOUSE_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "GATEHOUSE_LOG_FORMAT": "json",
    }
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py", "controlplane.wsgi"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, process=process, log=log)
        for _ in range(10):
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200

        def healthz_count() -> float:
            answer = httpx.get(f"{base}/metrics", timeout=10)
            assert answer.status_code == 200
            found = samples(answer.text)
            assert value(found, "gatehouse_dependency_up", name="postgresql") == 1
            return value(found, "gatehouse_http_requests_total", method="GET", route="healthz", status="2xx")

        counted = healthz_count()
        assert counted >= 11
        # Replace every worker, one at a time: their counts are folded into the archive, once.
        for worker in psutil.Process(process.pid).children():
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
            wait_until(
                lambda pid=worker.pid: (
                    not (metrics_dir / f"counter_{pid}.db").exists()
                    and len(psutil.Process(process.pid).children()) == 2
                ),
                process=process,
                log=log,
            )
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, process=process, log=log)
        assert healthz_count() == counted + 1
        assert (metrics_dir / "counter_archive.db").exists()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line is JSON
    assert any(line["message"].startswith("Booting worker") and line["role"] == "web" for line in lines)


# The dashboard ------------------------------------------------------------------------------


def exported_metric_names(exposition: str) -> set[str]:
    """Every series name the expositions can contain, from their # TYPE lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("", "_created")}.get(kind, ("",))
        names.update(name + suffix for suffix in suffixes)
    return names


def panels_of(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_the_dashboard_is_a_grafana_model_on_a_prometheus_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    charts = [panel for panel in panels_of(dashboard) if panel["type"] != "row"]
    assert len({panel["id"] for panel in panels_of(dashboard)}) == len(panels_of(dashboard))
    for panel in charts:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${" + variable["name"] + "}"}, panel["title"]
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}


def test_every_dashboard_query_uses_a_metric_the_code_exports(db):
    exposition = Client().get("/metrics").content.decode() + generate_latest(gateway_metrics.registry).decode()
    exported = exported_metric_names(exposition)
    dashboard = json.loads(DASHBOARD.read_text())
    used = set()
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            used.update(re.findall(r"\b(?:gatehouse|gateway)_[a-z0-9_]+\b", target["expr"]))
    assert used, "the dashboard queries no metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    # And every panel the issue asks for is there.
    titles = " | ".join(panel["title"].lower() for panel in panels_of(dashboard))
    for topic in ("status", "p50", "errors", "tokens", "buffered", "revision", "portal", "queue", "publish lag"):
        assert topic in titles, topic
    assert "ingestion lag" in titles and "dead letters" in titles

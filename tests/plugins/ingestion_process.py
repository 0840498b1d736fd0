"""Real control-plane processes (ingestion, Celery worker and beat) on the test database."""

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings
from django.db import connection

from tests.plugins.gateway_workers import ROOT


def ledger_database_url() -> str:
    """DATABASE_URL pointed at the test database pytest-django created (the test needs
    `transactional_db` so that the process sees its rows)."""
    parsed = urlparse(os.environ["DATABASE_URL"])
    return urlunparse(parsed._replace(path=f"/{connection.settings_dict['NAME']}"))


def control_plane_env(redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a control-plane process (ingestion, Celery) working on the test
    database, with Redis at `redis_url` (default: the suite's)."""
    return {
        **os.environ,
        "DATABASE_URL": ledger_database_url(),
        "REDIS_URL": redis_url or settings.REDIS_URL,
        "GATEHOUSE_REDIS_PREFIX": settings.GATEHOUSE_REDIS_PREFIX,
        # The test's key ring, which sealed the database's canary: the start-up check wants it.
        **{f"GATEHOUSE_KEK_{version}": key for version, key in settings.GATEHOUSE_KEK_RING.items()},
        **extra,
    }


@pytest.fixture
def control_plane_process(tmp_path, fresh_key_ring):
    """control_plane_process(name, argv, redis_url=..., **env) -> (process, log path): a real
    control-plane process (argv after the interpreter) on the test database; stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(name: str, argv: list[str], redis_url: str | None = None, **env: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(  # noqa: S603  (our own entry points, fixed arguments)
            [sys.executable, *argv],
            cwd=ROOT,
            env=control_plane_env(redis_url, **env),
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        started.append(process)
        return process, log

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def ingestion_process(control_plane_process):
    """ingestion_process(consumer, redis_url=...) -> (process, log path); stopped after the test."""

    def start(consumer: str, redis_url: str | None = None) -> tuple[subprocess.Popen, Path]:
        argv = ["manage.py", "ingest_usage", "--consumer", consumer]
        return control_plane_process(f"ingest-{consumer}", argv, redis_url)

    return start

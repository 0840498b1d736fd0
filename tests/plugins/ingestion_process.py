"""Real `manage.py ingest_usage` processes, writing into the test database."""

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


@pytest.fixture
def ingestion_process(tmp_path, fresh_key_ring):
    """ingestion_process(consumer, redis_url=...) -> (process, log path); stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(consumer: str, redis_url: str | None = None) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"ingest-{consumer}.log"
        process = subprocess.Popen(  # noqa: S603  (our own manage.py, fixed arguments)
            [sys.executable, "manage.py", "ingest_usage", "--consumer", consumer],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": ledger_database_url(),
                "REDIS_URL": redis_url or settings.REDIS_URL,
                "GATEHOUSE_REDIS_PREFIX": settings.GATEHOUSE_REDIS_PREFIX,
                # The test's key ring, which sealed the database's canary: the start-up check wants it.
                **{f"GATEHOUSE_KEK_{version}": key for version, key in settings.GATEHOUSE_KEK_RING.items()},
            },
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        started.append(process)
        return process, log

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=15)

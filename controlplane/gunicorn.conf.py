"""gunicorn settings for the portal: `gunicorn -c controlplane/gunicorn.conf.py controlplane.wsgi`.

Every value comes from the environment with a production default (README, "Operating in
production"):

- GATEHOUSE_BIND (`host:port` or `unix:/path`), else `0.0.0.0:$PORT` (PORT default 8000).
- WEB_CONCURRENCY worker processes, default 2 x CPUs + 1, at most 12; GUNICORN_THREADS threads
  in each (default 4). Threaded workers keep a streamed audit export or a slow client from
  being killed by the worker timeout, which only fires when a whole process stops answering.
  Each thread may hold a PostgreSQL connection: plan for workers x threads per portal host.
- GUNICORN_TIMEOUT (30 s) for a hung worker, GUNICORN_GRACEFUL_TIMEOUT (30 s) to finish
  requests on shutdown or restart, GUNICORN_KEEPALIVE (5 s) behind a load balancer.
- GUNICORN_MAX_REQUESTS (5,000) requests per worker before it is replaced, plus up to
  GUNICORN_MAX_REQUESTS_JITTER (500) so workers do not all restart at once: memory that a
  worker slowly accumulates is given back.
- No access log unless GATEHOUSE_ACCESS_LOG=1 (the load balancer and the request metrics
  cover it); gunicorn's own lines are JSON like the application's unless
  GATEHOUSE_LOG_FORMAT=text.

Request metrics use prometheus_client's multiprocess mode (controlplane/prometheus_files.py):
PROMETHEUS_MULTIPROC_DIR, or a fresh temporary directory removed on exit.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# gunicorn runs this file before the application is importable: the project root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Set before any worker imports prometheus_client, which reads it once.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gatehouse-metrics-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

from controlplane import prometheus_files  # noqa: E402  (after PROMETHEUS_MULTIPROC_DIR is set)


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(2 * cores + 1, 12)


bind = [os.environ.get("GATEHOUSE_BIND") or f"0.0.0.0:{_int('PORT', 8000)}"]  # behind a load balancer
workers = _int("WEB_CONCURRENCY", _default_workers())
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 4)
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
max_requests = _int("GUNICORN_MAX_REQUESTS", 5000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 500)
# Heartbeat files in memory: a slow disk must not make the master think a worker hung.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
# The control socket (gunicornc) is an admin interface nobody here uses, and one per user.
control_socket_disable = True
_access_log = _flag("GATEHOUSE_ACCESS_LOG")
accesslog = "-" if _access_log else None
errorlog = "-"
loglevel = os.environ.get("GATEHOUSE_LOG_LEVEL", "info").lower()

if (os.environ.get("GATEHOUSE_LOG_FORMAT") or ("text" if _flag("DJANGO_DEBUG") else "json")).strip().lower() == "json":
    _handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "gateway.logs.JsonFormatter", "role": "web"}},
        "handlers": {"console": _handler, "error_console": _handler},
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            # A logging config would turn the access log on by itself: only GATEHOUSE_ACCESS_LOG=1 does.
            "gunicorn.access": {"level": "INFO", "handlers": ["console"] if _access_log else [], "propagate": False},
        },
    }


def on_starting(server) -> None:
    prometheus_files.prepare(METRICS_DIR)


def child_exit(server, worker) -> None:
    """A worker is gone (restart, crash or shutdown): fold its counts into the archives."""
    prometheus_files.fold_dead_process(METRICS_DIR, worker.pid)


def on_exit(server) -> None:
    if _own_metrics_dir:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)

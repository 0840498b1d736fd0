"""Health probes run inside the Gatehouse image (python:3.11-slim has no curl).

    python deploy/container/probe.py http URL     a 2xx answer within 5 s (redirects are failures)
    python deploy/container/probe.py celery NAME  the Celery worker NAME@<host name> answers a ping
    python deploy/container/probe.py alive        PID 1 runs: not stopped, not a zombie

`http` sends `Host: localhost` and `X-Forwarded-Proto: https`: the portal in production mode
answers a plain-HTTP request with a redirect to HTTPS and refuses a Host outside
DJANGO_ALLOWED_HOSTS, so a probe must look like a request that came through the TLS proxy
(DJANGO_BEHIND_PROXY=1, and `localhost` in DJANGO_ALLOWED_HOSTS). The gateway ignores both.

`celery` needs the broker, so it suits readiness, not liveness: a Redis outage must not get
every worker restarted (they reconnect by themselves). Celery beat and ingestion answer nothing
a probe could ask; `alive` is all a probe can tell about them (README, "Deploying").
"""

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_SECONDS = 5.0
APP_DIR = Path(__file__).resolve().parent.parent.parent


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer we did not want: urlopen raises HTTPError


def probe_http(url: str) -> str | None:
    request = urllib.request.Request(url, headers={"Host": "localhost", "X-Forwarded-Proto": "https"})  # noqa: S310
    opener = urllib.request.build_opener(NoRedirects)
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        return f"{url} answered {error.code}"
    except OSError as error:
        return f"{url}: {error}"
    return None if 200 <= status < 300 else f"{url} answered {status}"


def load_database_url_from_file() -> None:
    """As entrypoint.sh does for the process: a probe gets the container's environment, not the
    one the entry point exported (the settings read the other *_FILE variables themselves)."""
    path = os.environ.get("DATABASE_URL_FILE")
    if path:
        os.environ["DATABASE_URL"] = Path(path).read_text().strip()


def probe_celery(name: str) -> str | None:
    load_database_url_from_file()
    sys.path.insert(0, str(APP_DIR))
    from controlplane.celery import app

    destination = f"{name}@{socket.gethostname()}"
    replies = app.control.ping(destination=[destination], timeout=TIMEOUT_SECONDS)
    return None if replies else f"Celery worker {destination} did not answer a ping"


def probe_alive() -> str | None:
    with open("/proc/1/stat") as stat:
        # pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ')'.
        state = stat.read().rpartition(")")[2].split()[0]
    return f"PID 1 is in state {state}" if state in {"Z", "X", "x", "T", "t"} else None


def main(argv: list[str]) -> int:
    probes = {"http": probe_http, "celery": probe_celery, "alive": probe_alive}
    if not argv or argv[0] not in probes or len(argv) != (1 if argv[0] == "alive" else 2):
        print(__doc__, file=sys.stderr)
        return 64
    failure = probes[argv[0]](*argv[1:])
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`make run`: the whole control plane in the foreground, on embedded PostgreSQL and Redis.

Migrates, creates the demo org on first run, publishes the gateway config, then runs the web
server, a Celery worker, the config publisher (a Celery worker on its own queue), Celery beat,
the usage ingestion, the provider simulator and one gateway worker side by side, under
scripts/supervisor.py: one that dies is logged and started again with
backoff while the others keep running, and all of them die with this script even when it is
killed hard. A port already taken is named with the process holding it before anything starts.
Ctrl-C or SIGTERM stops them all, then the embedded servers, and exits 0.

Environment: PORT (web server port, default 8000), GATEWAY_PORT (8080), SIMULATOR_PORT (8090);
DATABASE_URL / REDIS_URL to use servers of your own; DJANGO_DEBUG defaults to 1 here. Keys
(secret key, key ring, config signing and gateway keys) are generated once into var/secrets.env.
"""

import os
import signal
import subprocess
import sys
import time

from services import ROOT, embedded_services
from supervisor import Supervisor, port_in_use

PYTHON = sys.executable
CHILD_STOP_TIMEOUT_SECONDS = 15


def log(message):
    print(f"[run] {message}", file=sys.stderr, flush=True)


def celery_worker(queue, concurrency, name):
    """A Celery worker's arguments (after the interpreter). Gossip, mingle and worker heartbeats
    serve monitoring we do not use, and their reconnect path is where a worker dies after a
    broker outage (kombu's 'NoneType' object has no attribute 'hostname'): off."""
    return [
        "-m", "celery", "-A", "controlplane", "worker", "-l", "info", "-Q", queue, "--concurrency", str(concurrency),
        "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def celery_beat():
    # The beat schedule lives in the database (django_celery_beat); --pidfile= turns off the pidfile.
    scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    return ["-m", "celery", "-A", "controlplane", "beat", "-l", "info", "--scheduler", scheduler, "--pidfile="]


def long_running_commands():
    port = os.environ.get("PORT", "8000")
    gateway_port = os.environ.get("GATEWAY_PORT", "8080")
    simulator_port = os.environ.get("SIMULATOR_PORT", "8090")
    publish_queue = os.environ.get("GATEHOUSE_PUBLISH_QUEUE", "publish")
    return {
        "web": [PYTHON, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        "worker": [PYTHON, *celery_worker("celery", 2, "worker")],
        # Config publishing on its own queue and worker: nothing else can delay a revocation.
        "publisher": [PYTHON, *celery_worker(publish_queue, 1, "publisher")],
        "beat": [PYTHON, *celery_beat()],
        "ingest": [PYTHON, "manage.py", "ingest_usage"],
        "simulator": [PYTHON, "-m", "gateway.simulator", "--port", simulator_port],
        "gateway": [PYTHON, "-m", "gateway", "--port", gateway_port],
    }


def development_secrets():
    """Keys generated on the first run and kept in var/secrets.env (mode 0600), so sessions and
    sealed provider secrets survive restarts. Variables already set in the environment win."""
    path = ROOT / "var" / "secrets.env"
    if not path.exists():
        import base64
        import secrets as random_source

        sys.path.insert(0, str(ROOT))
        from gateway.keys import fresh_keys

        values = {
            "DJANGO_SECRET_KEY": random_source.token_urlsafe(50),
            "GATEHOUSE_KEK_1": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            **fresh_keys(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.writelines(f"{name}={value}\n" for name, value in values.items())
        log(f"generated development keys in {path}")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs if name not in os.environ}


class StopRequested(Exception):
    pass


def request_stop(signum, frame):
    raise StopRequested(signal.Signals(signum).name)


def main():
    # SIGTERM becomes an exception like Ctrl-C, so the `with` blocks below always clean up.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        with embedded_services() as urls:
            env = {
                **os.environ,
                "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "1"),
                **development_secrets(),
                **urls,
            }
            simulator = f"http://127.0.0.1:{os.environ.get('SIMULATOR_PORT', '8090')}"
            env.setdefault("GATEHOUSE_SIMULATOR_URL", simulator)
            env.setdefault("GATEWAY_NODE_ID", "local-gateway-1")
            env.setdefault("GATEWAY_STATE_DIR", str(ROOT / "var" / "gateway"))
            port = os.environ.get("PORT", "8000")  # the playground calls the gateway from the portal's pages
            env.setdefault("GATEWAY_CORS_ORIGINS", f"http://127.0.0.1:{port},http://localhost:{port}")
            return run(env)
    except StopRequested as stop:
        log(f"{stop}: stopped")
        return 0
    except subprocess.CalledProcessError as failed:
        log(f"{' '.join(failed.cmd[1:])} failed with status {failed.returncode}")
        return 1


def ports_taken():
    """A line per port of ours that another process holds."""
    ports = {"PORT": "8000", "GATEWAY_PORT": "8080", "SIMULATOR_PORT": "8090"}
    taken = []
    for variable, default in ports.items():
        port = int(os.environ.get(variable, default))
        holder = port_in_use(port)
        if holder:
            taken.append(f"port {port} ({variable}) is in use by {holder}")
    return taken


def run(env):
    taken = ports_taken()
    if taken:
        for line in taken:
            log(line)
        log("stop that process (an earlier `make run` killed hard?) or choose other ports; nothing was started")
        return 1
    for setup in (["migrate", "--noinput"], ["bootstrap_demo"], ["publish_config"]):
        log(f"manage.py {' '.join(setup)}")
        subprocess.run([PYTHON, "manage.py", *setup], cwd=ROOT, env=env, check=True)

    supervisor = Supervisor(long_running_commands(), cwd=ROOT, env=env, log=log)
    try:
        supervisor.start_all()
        log(f"portal:  http://127.0.0.1:{os.environ.get('PORT', '8000')}/")
        log(f"gateway: http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8080')}/v1 (key in var/demo.env)")
        log("Ctrl-C stops everything")
        while True:
            supervisor.tick()
            time.sleep(0.5)
    finally:
        # Ignore further Ctrl-C while stopping, so a second one does not leave servers running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop_all(CHILD_STOP_TIMEOUT_SECONDS)


if __name__ == "__main__":
    sys.exit(main())

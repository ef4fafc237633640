"""Stello for Django settings: one module, driven by environment variables.

Every default runs as-is (the embedded mode: SQLite + in-memory channel layer + the offline LLM).
Production changes only environment variables; see the README's Configuration section.
A bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from stello_project.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
    sqlite_database,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
# The embedded default key is for development only (`make run` sets DEBUG=1): without DEBUG the
# server refuses to start on it, since it signs the admin's sessions and CSRF tokens.
EMBEDDED_SECRET_KEY = "stello-embedded-insecure-key-set-SECRET_KEY-in-production"
SECRET_KEY = env_str("SECRET_KEY", EMBEDDED_SECRET_KEY)
if SECRET_KEY == EMBEDDED_SECRET_KEY and not DEBUG:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (the embedded default "
                               "key is for development only)")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- HTTPS (`manage.py check --deploy` checks these; see the README's Production section) -------
# Behind a TLS-terminating proxy, SECURE_PROXY_SSL_HEADER tells Django which requests came in
# over HTTPS, e.g. `X-Forwarded-Proto: https` (set it only if the proxy always sets that header).
_PROXY_SSL_HEADER = env_str("SECURE_PROXY_SSL_HEADER")
if _PROXY_SSL_HEADER:
    _header, _, _value = _PROXY_SSL_HEADER.partition(":")
    if not _header.strip() or not _value.strip():
        raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER must look like "
                                   f"'X-Forwarded-Proto: https', got {_PROXY_SSL_HEADER!r}")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _header.strip().upper().replace("-", "_"),
                               _value.strip())
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers probe the health checks over plain HTTP: they answer there, never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# The admin's cookies; the API itself sets none.
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)

# --- CORS, for browser clients on other origins (django-cors-headers) ---------------------------
# Only the API and its schema answer CORS; the admin never does. X-API-Key and Authorization
# may be sent; no cookies are (the API does not use them).
CORS_ALLOWED_ORIGINS = env_list("STELLO_CORS_ALLOWED_ORIGINS", [])
CORS_URLS_REGEX = r"^/(spaces|api/schema/|healthz$|readyz$)"
CORS_ALLOW_HEADERS = ("accept", "authorization", "content-type", "x-api-key")
CORS_EXPOSE_HEADERS = ("Retry-After", "WWW-Authenticate")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served by us: /api/docs/ needs no internet
    "channels",
    "spaces",
    "sessions_app",
    "console",  # the web console under /console/
]

MIDDLEWARE = [
    # django-cors-headers' middleware, left out of the chain when no origin is allowed (it would
    # only cost every request its checks).
    "stello_project.middleware.CorsMiddlewareWhenConfigured",
    # Everything but the admin (and its static files) skips the sync middleware below and goes
    # straight to its async view, with the hooks of SecurityMiddleware and XFrameOptionsMiddleware
    # applied on the event loop. See the module.
    "stello_project.middleware.RequestPathMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "stello_project.middleware.ViewHandlerMiddleware",  # marks where the views start
]
# No CsrfViewMiddleware: under ASGI Django would run its view hook in a worker thread for every
# request. The API uses no cookies (it authenticates with an API key), and the admin protects its
# own views (the admin site wraps each one in `csrf_protect`).
SILENCED_SYSTEM_CHECKS = ["security.W003"]

ROOT_URLCONF = "stello_project.urls"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

WSGI_APPLICATION = None
ASGI_APPLICATION = "stello_project.asgi.application"

# --- Database: SQLite (WAL, IMMEDIATE, busy timeout) unless DATABASE_URL is set. ----------------
_DATABASE_URL = env_str("DATABASE_URL")
if _DATABASE_URL:
    DATABASES = {
        "default": database_from_url(
            "DATABASE_URL",
            _DATABASE_URL,
            pool_min=env_int("DATABASE_POOL_MIN_SIZE", 2, minimum=0),
            pool_max=env_int("DATABASE_POOL_MAX_SIZE", 20, minimum=1),
            pool_timeout=env_float("DATABASE_POOL_TIMEOUT_SECONDS", 30.0, minimum=0.1),
        )
    }
    # The durable memory-job queue lives in PostgreSQL (its tables come with its migrations).
    INSTALLED_APPS.append("procrastinate.contrib.django")
else:
    DATABASES = {"default": sqlite_database(str(BASE_DIR / ".stello" / "db.sqlite3"))}
    (BASE_DIR / ".stello").mkdir(exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer: in-memory (one process) unless REDIS_URL is set. ----------------------------
# On Redis, the pub/sub layer: each process holds ONE subscriber connection (plus one to
# publish), however many WebSocket connections watch sessions, and it never blocks on a Redis
# command, so redis-py's socket timeout cannot fire while it waits (the list-based
# `RedisChannelLayer` blocks 5 s per receive, as long as redis-py's default socket timeout).
# Live updates need no delivery guarantee beyond "while you are subscribed": `turnCount` lets a
# client notice a gap. Health checks find a dead connection within 30 s; keepalive helps too.
_REDIS_URL = env_str("REDIS_URL")
if _REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [{"address": _REDIS_URL, "socket_connect_timeout": 5,
                           "socket_keepalive": True, "health_check_interval": 30}],
                "prefix": env_str("STELLO_REDIS_PREFIX", "stello"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Cache (rate-limit counters): shared through Redis when there is one. -----------------------
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _REDIS_URL,
         "KEY_PREFIX": env_str("STELLO_REDIS_PREFIX", "stello")}
        if _REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- Auth, i18n, static ------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["spaces.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Bodies are JSON whatever the Content-Type says (the original server did the same).
    "DEFAULT_PARSER_CLASSES": ["spaces.parsers.AnyJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["spaces.renderers.FastJSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "spaces.renderers.JsonFirstContentNegotiation",
    "EXCEPTION_HANDLER": "sessions_app.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["spaces.throttling.ApiKeyRateThrottle"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# --- OpenAPI schema (/api/schema/) and docs (/api/docs/): drf-spectacular ------------------------
# The operations are documented in spaces/schema.py and sessions_app/api/schema.py.
SPECTACULAR_SETTINGS = {
    "TITLE": "Stello for Django",
    "VERSION": "0.1.0",
    "DESCRIPTION": (
        "Multi-tenant agent-session server: spaces, session trees, turns, forks and layered "
        "memory. Every path under `/spaces` needs the API key, in the `X-API-Key` header or as "
        "`Authorization: Bearer <key>`. Bodies are JSON, keys "
        "are camelCase, timestamps look like `2026-11-23T11:24:14.471Z`, and every error is "
        '`{"error": "<message>", "code": "<CODE>"}`; a method a path does not list answers 405 '
        "`METHOD_NOT_ALLOWED` with an `Allow` header."
    ),
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from drf-spectacular-sidecar (served by stello_project/urls.py), not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    },
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,
    "ENUM_NAME_OVERRIDES": {
        "SessionRoleEnum": ["main", "standard"],
        "SessionStatusEnum": ["active", "archived"],
        "MessageRoleEnum": ["system", "user", "assistant", "tool"],
        "ForkContextEnum": ["none", "inherit"],
    },
    "PREPROCESSING_HOOKS": ["sessions_app.api.schema.preprocess_endpoints"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "sessions_app.api.schema.postprocess_schema",
        "spaces.idempotency_schema.postprocess_schema",  # Idempotency-Key on mutating routes
    ],
}

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("STELLO_MAX_BODY_BYTES", 1_048_576, minimum=1024)

# --- Stello ------------------------------------------------------------------------------------
_PROVIDERS = ("offline", "openai", "anthropic")
_LLM_VARIABLES = ("PROVIDER", "MODEL", "BASE_URL", "API_KEY", "MAX_CONTEXT_TOKENS",
                  "MAX_OUTPUT_TOKENS", "TIMEOUT_SECONDS", "MAX_RETRIES", "SCRIPT")


def _llm_settings(prefix: str, fallback: dict | None) -> dict | None:
    """STELLO_LLM_* (or the STELLO_MEMORY_LLM_* twins, which default to the main ones)."""
    base = fallback or {}
    provider_var = f"{prefix}_PROVIDER"
    if fallback is not None and not any(env_str(f"{prefix}_{name}") for name in _LLM_VARIABLES):
        return None  # no memory-specific LLM: the main one serves memory calls too
    provider = env_choice(provider_var, base.get("provider", "offline"), _PROVIDERS)
    default_model = {"offline": "offline-echo", "openai": "gpt-4o-mini",
                     "anthropic": "claude-haiku-4-5-20251001"}[provider]
    same_provider = base.get("provider") == provider
    return {
        "provider": provider,
        "model": env_str(f"{prefix}_MODEL", base.get("model") if same_provider else default_model),
        "base_url": env_str(f"{prefix}_BASE_URL", base.get("base_url") if same_provider else None),
        "api_key": env_str(f"{prefix}_API_KEY", base.get("api_key") if same_provider else None),
        "max_context_tokens": env_int(f"{prefix}_MAX_CONTEXT_TOKENS",
                                      base.get("max_context_tokens", 128_000), minimum=256),
        "max_output_tokens": env_int(f"{prefix}_MAX_OUTPUT_TOKENS",
                                     base.get("max_output_tokens", 4096), minimum=1),
        "timeout_seconds": env_float(f"{prefix}_TIMEOUT_SECONDS",
                                     base.get("timeout_seconds", 60.0), minimum=0.01),
        "max_retries": env_int(f"{prefix}_MAX_RETRIES", base.get("max_retries", 2), minimum=0),
        "script_path": _script_path(f"{prefix}_SCRIPT", base.get("script_path")),
    }


def _script_path(name: str, default: str | None) -> str | None:
    """The offline LLM's script file; its content is checked at start-up (runtime/startup.py)."""
    path = env_str(name, default)
    if path is not None and not os.path.isfile(path):
        raise ImproperlyConfigured(f"{name}: no such file {path!r}")
    return path


def _rate_limit(name: str) -> str | None:
    """`<count>/<s|sec|m|min|h|hour|d|day>` as DRF throttles take it, or None (no limit)."""
    raw = env_str(name)
    if raw is None:
        return None
    count, _, period = raw.partition("/")
    valid_period = period.strip()[:1] in ("s", "m", "h", "d")
    if not count.strip().isdigit() or int(count) < 1 or not valid_period:
        raise ImproperlyConfigured(f"{name} must look like 600/min or 10/s, got {raw!r}")
    return f"{int(count)}/{period.strip()}"


def _json_object(name: str) -> dict:
    """A JSON object from the environment ({} when unset); its entries are checked at
    start-up (sessions_app.conf)."""
    raw = env_str(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _prices(name: str) -> dict[str, dict[str, float]]:
    """`{"<model>" or "*": {"input": x, "output": y, "cached": z}}`, prices per million tokens
    (`cached` defaults to `input`)."""
    raw = env_str(name)
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be JSON: {exc}") from exc
    if not isinstance(table, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object of models")
    parsed: dict[str, dict[str, float]] = {}
    for model, price in table.items():
        if not isinstance(price, dict) or not set(price) <= {"input", "output", "cached"} or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v < 0
            for v in price.values()
        ):
            raise ImproperlyConfigured(
                f"{name}: {model!r} must map input/output/cached to non-negative numbers")
        parsed[model] = {"input": float(price.get("input", 0)),
                         "output": float(price.get("output", 0)),
                         "cached": float(price.get("cached", price.get("input", 0)))}
    return parsed


_MAIN_LLM = _llm_settings("STELLO_LLM", None)

STELLO = {
    "LLM": _MAIN_LLM,
    "MEMORY_LLM": _llm_settings("STELLO_MEMORY_LLM", _MAIN_LLM),
    "MAX_TOOL_ROUNDS": env_int("STELLO_MAX_TOOL_ROUNDS", 5, minimum=0),
    "MAX_FORKS_PER_TURN": env_int("STELLO_MAX_FORKS_PER_TURN", 3, minimum=0),
    "MAX_PARALLEL_TOOLS": env_int("STELLO_MAX_PARALLEL_TOOLS", 8, minimum=1),
    # Tool calls that need a human's approval (config.approveTools): how long a turn waits
    # for the answers (then the unanswered calls are denied), and how often every serving
    # process looks for waiting turns whose process stopped (docs/agent-control.md).
    "APPROVAL_TIMEOUT_SECONDS": env_float("STELLO_APPROVAL_TIMEOUT_SECONDS", 600.0,
                                          minimum=1.0),
    "APPROVAL_SWEEP_SECONDS": env_float("STELLO_APPROVAL_SWEEP_SECONDS", 15.0, minimum=0.1),
    # Named LLM profiles a space or session may pick (`provider` in its config), and the MCP
    # tool servers spaces may use (`mcpServers`): JSON objects, see docs/agent-control.md.
    "LLM_PROFILES": _json_object("STELLO_LLM_PROFILES"),
    "MCP_SERVERS": _json_object("STELLO_MCP_SERVERS"),
    "MCP_TIMEOUT_SECONDS": env_float("STELLO_MCP_TIMEOUT_SECONDS", 30.0, minimum=0.01),
    "MCP_MAX_RESULT_CHARS": env_int("STELLO_MCP_MAX_RESULT_CHARS", 100_000, minimum=100),
    # Core memory (L1): size limits, and whether prompts and the agent's tools see it.
    "CORE_MAX_VALUE_BYTES": env_int("STELLO_CORE_MAX_VALUE_BYTES", 16384, minimum=64),
    "CORE_MAX_TOTAL_BYTES": env_int("STELLO_CORE_MAX_TOTAL_BYTES", 65536, minimum=64),
    "CORE_IN_PROMPT": env_bool("STELLO_CORE_IN_PROMPT", False),
    "CORE_TOOLS": env_bool("STELLO_CORE_TOOLS", False),
    # Child sessions get a <session_identity> system note (off: it changes prompts).
    "SESSION_IDENTITY": env_bool("STELLO_SESSION_IDENTITY", False),
    "FORK_STRATEGY": env_choice("STELLO_FORK_STRATEGY", "flat", ("flat", "tree")),
    "CONSOLIDATE_EVERY_N_TURNS": env_int("STELLO_CONSOLIDATE_EVERY_N_TURNS", 3, minimum=0),
    "INTEGRATE_AFTER_CONSOLIDATE": env_bool("STELLO_INTEGRATE_AFTER_CONSOLIDATE", True),
    "CONSOLIDATE_ON_LEAVE": env_bool("STELLO_CONSOLIDATE_ON_LEAVE", False),
    "CONSOLIDATE_ON_ARCHIVE": env_bool("STELLO_CONSOLIDATE_ON_ARCHIVE", True),
    "MEMORY_LANGUAGE": env_str("STELLO_MEMORY_LANGUAGE", "English"),
    # Event-log entries kept per session (older ones are pruned at the end of a turn; a resume
    # from before them gets `gap`); 0 keeps everything.
    "EVENT_RETENTION": env_int("STELLO_EVENT_RETENTION", 10000, minimum=0),
    # How long a running turn's events may wait to be published together (followers in other
    # processes hear them this much later; 0: each as soon as the loop gets to it).
    "EVENT_FLUSH_MS": env_int("STELLO_EVENT_FLUSH_MS", 20, minimum=0),
    # Live events a resumed WebSocket or SSE subscriber may have waiting before it gets `gap`.
    "EVENT_SUBSCRIBER_BUFFER": env_int("STELLO_EVENT_SUBSCRIBER_BUFFER", 1000, minimum=1),
    # What a turn does when its session runs one (a request's `ifBusy` wins).
    "IF_BUSY": env_choice("STELLO_IF_BUSY", "enqueue", ("reject", "enqueue", "interrupt")),
    "SSE_HEARTBEAT_SECONDS": env_float("STELLO_SSE_HEARTBEAT_SECONDS", 15.0, minimum=0.01),
    "AGENT_IDLE_TTL_SECONDS": env_int("STELLO_AGENT_IDLE_TTL_SECONDS", 300, minimum=1),
    "SESSION_LOCK_TIMEOUT_SECONDS": env_float("STELLO_SESSION_LOCK_TIMEOUT_SECONDS", 120.0,
                                              minimum=0.0),
    # How long a stored answer to an Idempotency-Key (or a WebSocket requestId) is replayed.
    "IDEMPOTENCY_KEY_TTL_SECONDS": env_int("STELLO_IDEMPOTENCY_KEY_TTL_SECONDS", 86_400,
                                           minimum=1),
    "SKILLS_DIRS": env_list("STELLO_SKILLS_DIRS", [], separator=os.pathsep),
    "TOOLS": env_list("STELLO_TOOLS", []),
    "BACKGROUND_RETRIES": env_int("STELLO_BACKGROUND_RETRIES", 2, minimum=0),
    # The durable memory-job queue (PostgreSQL): backoff step between retries, how long a
    # worker may go without a heartbeat before its jobs are run elsewhere, how long SIGTERM
    # waits for running jobs, and how many jobs one process runs at once.
    "BACKGROUND_RETRY_DELAY_SECONDS": env_int("STELLO_BACKGROUND_RETRY_DELAY_SECONDS", 5,
                                              minimum=0),
    "BACKGROUND_STALL_SECONDS": env_float("STELLO_BACKGROUND_STALL_SECONDS", 60.0,
                                          minimum=0.5),
    "BACKGROUND_SHUTDOWN_GRACE_SECONDS": env_float("STELLO_BACKGROUND_SHUTDOWN_GRACE_SECONDS",
                                                   30.0, minimum=0.0),
    "BACKGROUND_CONCURRENCY": env_int("STELLO_BACKGROUND_CONCURRENCY", 4, minimum=1),
    "AUTH_CACHE_SECONDS": env_float("STELLO_AUTH_CACHE_SECONDS", 5.0, minimum=0.0),
    "WS_MAX_FRAME_BYTES": env_int("STELLO_WS_MAX_FRAME_BYTES", 1_048_576, minimum=1024),
    "HTTP_BODY_TIMEOUT_SECONDS": env_float("STELLO_HTTP_BODY_TIMEOUT_SECONDS", 30.0,
                                           minimum=0.1),
    "HTTP_HEADER_TIMEOUT_SECONDS": env_float("STELLO_HTTP_HEADER_TIMEOUT_SECONDS", 10.0,
                                             minimum=0.1),
    "WS_PING_INTERVAL_SECONDS": env_float("STELLO_WS_PING_INTERVAL_SECONDS", 20.0, minimum=0.1),
    "WS_PING_TIMEOUT_SECONDS": env_float("STELLO_WS_PING_TIMEOUT_SECONDS", 20.0, minimum=0.1),
    # Deepest nesting accepted in a request body or a WebSocket frame (400 / PARSE_ERROR).
    "MAX_JSON_DEPTH": env_int("STELLO_MAX_JSON_DEPTH", 64, minimum=2),
    "RATE_LIMIT": _rate_limit("STELLO_RATE_LIMIT"),
    "PRICES": _prices("STELLO_PRICES"),  # usage accounting: per model, per million tokens
    "REDIS_URL": _REDIS_URL,  # checked at start-up (runtime/startup.py)
    # The async pool of the hot paths (PostgreSQL only). A connection is held for one short
    # unit of work, never while a request waits on an LLM or a lock, so a few serve thousands
    # of in-flight turns. Past the timeout, or with too many waiters, the answer is 503. A
    # request that must queue for a connection costs psycopg_pool a waiter, a condition and a
    # task, so the maximum covers a busy process's statements in flight at once (at 16
    # concurrent streams, 20 instead of 10 cut our server's CPU per stream by about a fifth;
    # README Performance). The Node original's pool is 20 too.
    "ASYNC_POOL_MIN_SIZE": env_int("STELLO_ASYNC_POOL_MIN_SIZE", 2, minimum=0),
    "ASYNC_POOL_MAX_SIZE": env_int("STELLO_ASYNC_POOL_MAX_SIZE", 20, minimum=1),
    "ASYNC_POOL_TIMEOUT_SECONDS": env_float("STELLO_ASYNC_POOL_TIMEOUT_SECONDS", 10.0,
                                            minimum=0.01),
    "ASYNC_POOL_MAX_WAITING": env_int("STELLO_ASYNC_POOL_MAX_WAITING", 5000, minimum=0),
    # POST /spaces/import and `importspace`: the largest file and the longest line accepted.
    "IMPORT_MAX_BYTES": env_int("STELLO_IMPORT_MAX_BYTES", 256 * 1024 * 1024, minimum=1024),
    "IMPORT_MAX_LINE_BYTES": env_int("STELLO_IMPORT_MAX_LINE_BYTES", 8 * 1024 * 1024,
                                     minimum=1024),
    # How often the retention sweep runs in a serving process (0: only by `sweepretention`).
    "RETENTION_SWEEP_MINUTES": env_int("STELLO_RETENTION_SWEEP_MINUTES", 60, minimum=0),
}

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        # Django's own messages (e.g. "Unauthorized: /spaces") once, in our format: by default
        # they go both to Django's DEBUG-only console and, through the root logger, to the
        # server's handler (daphne configures one), so `make run` printed each twice.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "stello": {"handlers": ["console"], "propagate": False,
                   "level": env_choice("STELLO_LOG_LEVEL", "info", _LOG_LEVELS).upper()},
    },
}

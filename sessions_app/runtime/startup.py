"""What the server checks and says about itself when it starts.

A setting that cannot work stops start-up with an ImproperlyConfigured naming the variable
(the entry points print it as one line): a bad tool path or skills folder, an unreadable
offline-LLM script, an unreachable Redis.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

REDIS_CHECK_TIMEOUT = 5.0  # seconds to connect to Redis and get its PONG
# An API key (`stello_<public prefix>_<secret>`) anywhere in a log line: the secret part.
KEY_SECRET = re.compile(r"(stello_[A-Za-z0-9]{8}_)[A-Za-z0-9]+")


class RedactApiKeys(logging.Filter):
    """Keeps the secret part of API keys out of log lines. No key is ever read from a query
    string, but a client may still send one there, and access logs print the whole path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(KEY_SECRET.sub(r"\1[redacted]", arg) if isinstance(arg, str)
                                else arg for arg in record.args)
        return True


def load_extensions() -> None:
    """Import the user tools and read the skills now, so a bad setting stops start-up."""
    from .pool import _skills, _user_tools

    for variable, load in (("STELLO_TOOLS", _user_tools), ("STELLO_SKILLS_DIRS", _skills)):
        try:
            load()
        except (ValueError, ImportError, AttributeError, OSError) as exc:
            raise ImproperlyConfigured(f"{variable}: {exc}") from exc
    # Agent-control settings: LLM profiles and MCP servers (they raise ImproperlyConfigured).
    from .. import conf

    conf.llm_profiles()
    conf.mcp_servers()


def check_llm_scripts() -> None:
    """Read the offline LLM's scripts now: a bad file would otherwise fail every turn."""
    from ..engine.llm import load_script

    for prefix, llm in (("STELLO_LLM", settings.STELLO["LLM"]),
                        ("STELLO_MEMORY_LLM", settings.STELLO["MEMORY_LLM"])):
        if llm and llm["provider"] == "offline" and llm.get("script_path"):
            try:
                load_script(llm["script_path"])
            except ValueError as exc:
                raise ImproperlyConfigured(f"{prefix}_SCRIPT: {exc}") from None


def check_redis() -> None:
    """Ping REDIS_URL: without Redis, live updates between processes would be lost silently
    while turns go on working."""
    import redis

    url = settings.STELLO.get("REDIS_URL")
    if not url:
        return
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"  # never the password
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_CHECK_TIMEOUT,
                                      socket_timeout=REDIS_CHECK_TIMEOUT)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as exc:
        raise ImproperlyConfigured(f"REDIS_URL: cannot use Redis at {shown}: {exc}") from None


def redact_api_keys_in_server_logs() -> None:
    """uvicorn's access log (HTTP) and error log (WebSocket upgrades) print paths with their
    query strings. daphne's access log writes to its stream directly, past any filter."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactApiKeys) for f in logger.filters):
            logger.addFilter(RedactApiKeys())


def check_database() -> None:
    """Stop start-up with one line naming DATABASE_URL when PostgreSQL cannot be reached,
    rather than start a server whose pools log reconnection attempts and answer 503."""
    import psycopg

    from spaces import pgpool

    info = pgpool.conninfo()
    if info is None:  # the embedded SQLite default
        return
    timeout = {} if "connect_timeout" in psycopg.conninfo.conninfo_to_dict(info) else {
        "connect_timeout": 10}
    try:
        psycopg.connect(info, **timeout).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())  # libpq's message spans lines
        raise ImproperlyConfigured(f"DATABASE_URL: cannot connect to PostgreSQL: {reason}") \
            from None


def log_startup(logger: logging.Logger) -> None:
    from ..engine.llm import LLMSettings, describe

    stello = settings.STELLO
    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
    load_extensions()
    check_database()
    check_llm_scripts()
    check_redis()
    redact_api_keys_in_server_logs()
    logger.info("Stello starting: database=%s channel_layer=%s", db, layer)
    logger.info("Chat %s", describe(LLMSettings(**stello["LLM"])))
    if stello["MEMORY_LLM"]:
        logger.info("Memory %s", describe(LLMSettings(**stello["MEMORY_LLM"])))
    if stello["LLM"]["provider"] == "offline":
        logger.warning("The offline LLM is active: replies are deterministic echoes, no model "
                       "is called. Set STELLO_LLM_PROVIDER to use a real model.")

"""What the server says about itself when it starts."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def load_extensions() -> None:
    """Import the user tools and read the skills now, so a bad setting stops start-up."""
    from .pool import _skills, _user_tools

    for variable, load in (("STELLO_TOOLS", _user_tools), ("STELLO_SKILLS_DIRS", _skills)):
        try:
            load()
        except (ValueError, ImportError, AttributeError, OSError) as exc:
            raise ImproperlyConfigured(f"{variable}: {exc}") from exc


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
    logger.info("Stello starting: database=%s channel_layer=%s", db, layer)
    logger.info("Chat %s", describe(LLMSettings(**stello["LLM"])))
    if stello["MEMORY_LLM"]:
        logger.info("Memory %s", describe(LLMSettings(**stello["MEMORY_LLM"])))
    if stello["LLM"]["provider"] == "offline":
        logger.warning("The offline LLM is active: replies are deterministic echoes, no model "
                       "is called. Set STELLO_LLM_PROVIDER to use a real model.")

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


def log_startup(logger: logging.Logger) -> None:
    from ..engine.llm import LLMSettings, describe

    stello = settings.STELLO
    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
    load_extensions()
    logger.info("Stello starting: database=%s channel_layer=%s", db, layer)
    logger.info("Chat %s", describe(LLMSettings(**stello["LLM"])))
    if stello["MEMORY_LLM"]:
        logger.info("Memory %s", describe(LLMSettings(**stello["MEMORY_LLM"])))
    if stello["LLM"]["provider"] == "offline":
        logger.warning("The offline LLM is active: replies are deterministic echoes, no model "
                       "is called. Set STELLO_LLM_PROVIDER to use a real model.")

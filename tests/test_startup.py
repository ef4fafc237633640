"""Start-up: bad extension settings stop the server, naming the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from sessions_app.runtime import pool
from sessions_app.runtime.startup import load_extensions


@pytest.fixture(autouse=True)
def fresh_extension_cache():
    pool._user_tools.cache_clear()
    pool._skills.cache_clear()
    yield
    pool._user_tools.cache_clear()
    pool._skills.cache_clear()


def test_a_bad_tool_path_stops_start_up_naming_the_variable(settings) -> None:
    settings.STELLO = {**settings.STELLO, "TOOLS": ["no.such.module.tool"]}
    with pytest.raises(ImproperlyConfigured, match="STELLO_TOOLS"):
        load_extensions()


def test_a_missing_skills_folder_stops_start_up_naming_the_variable(settings, tmp_path) -> None:
    settings.STELLO = {**settings.STELLO, "SKILLS_DIRS": [str(tmp_path / "missing")]}
    with pytest.raises(ImproperlyConfigured, match="STELLO_SKILLS_DIRS"):
        load_extensions()


def test_valid_tools_and_skills_load(settings, tmp_path) -> None:
    skill = tmp_path / "greet"
    skill.mkdir()
    (skill / "SKILL.md").write_text("---\nname: greet\ndescription: Say hi\n---\nSay hello.\n")
    settings.STELLO = {**settings.STELLO, "TOOLS": [], "SKILLS_DIRS": [str(tmp_path)]}
    load_extensions()
    assert set(pool._skills()) == {"greet"}

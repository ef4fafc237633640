"""The engine is pure Python: importing all of it loads nothing of Django, DRF or Channels."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import sessions_app.engine as engine

REPO = Path(__file__).resolve().parents[2]


def engine_modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(engine.__path__, prefix="sessions_app.engine.")
    )


def test_engine_modules_import_nothing_from_django_drf_or_channels() -> None:
    modules = engine_modules()
    assert "sessions_app.engine.agent" in modules
    assert "sessions_app.engine.turn" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = [m for m in sys.modules"
        " if m.split('.')[0] in ('django', 'rest_framework', 'channels', 'daphne')]\n"
        "assert not bad, bad\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr

#!/usr/bin/env python3
"""The web console's first render of a large space, measured in a real browser.

Starts one server on the embedded default (SQLite, in-memory channel layer, offline LLM; the
project's `.stello/db.sqlite3`, migrated first), makes a user with a key, a space and
`--sessions` sessions in it (the main session and forks, every fourth one forked again), then
opens the console in headless Chromium (Debian's `chromium` and `chromium-driver`, through
Selenium from requirements-dev.txt) `--runs` times with the space open, as after a reload.
Each run reads the page's own measurement (`window.stelloConsole.metrics.firstRender`, from
performance.now): `sinceNavigationMs` from the navigation's start to the drawn star map (page,
scripts, sign-in check, spaces list, space and tree fetch, drawing, one frame), `totalMs` from
opening the space, `fetchMs` of that for the two requests. Prints one JSON document (medians,
minimum, maximum of each). The space, the key and the server are removed at the end.

    .venv/bin/python bench/console.py [--port 8090] [--sessions 200] [--runs 5]

It binds 127.0.0.1 only. Exit status 0, or 1 when anything failed (the JSON says what).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Loopback only, whatever proxy the environment names.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
START_TIMEOUT = 60.0
RENDER_TIMEOUT = 60.0


def manage(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout


def call(base: str, key: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        base + path, method=method, headers={"X-API-Key": key, "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body).encode())
    with HTTP.open(request, timeout=30) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


def wait_until_answering(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            HTTP.open(base + "/healthz", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT:g}s")


def seed(base: str, key: str, sessions: int) -> tuple[str, str]:
    """A space with `sessions` sessions; returns (space id, its label)."""
    label = f"console bench {sessions}"
    space = call(base, key, "POST", "/spaces", {"label": label})
    parents = [call(base, key, "GET", f"/spaces/{space['id']}/sessions")["id"]]
    for n in range(sessions - 1):
        source = parents[n % len(parents)]
        child = call(base, key, "POST", f"/spaces/{space['id']}/sessions/{source}/fork",
                     {"label": f"s{n}"})
        if n % 4 == 0:
            parents.append(child["id"])
    return space["id"], label


def measure(base: str, key: str, space_id: str, sessions: int, runs: int) -> list[dict]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        raise RuntimeError("needs chromium and chromium-driver (apt-get install -y chromium "
                           "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-proxy-server"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(base + "/console/")
        results = []
        for _ in range(runs):
            # As after a reload: the key and the open space are in the tab's sessionStorage.
            driver.execute_script(
                "sessionStorage.clear();"
                "sessionStorage.setItem('stello.console.key', arguments[0]);"
                "sessionStorage.setItem('stello.console.open',"
                " JSON.stringify({spaceId: arguments[1]}))",
                key, space_id)
            driver.get("about:blank")
            driver.get(base + "/console/")
            metrics = WebDriverWait(driver, RENDER_TIMEOUT).until(lambda d: d.execute_script(
                "const m = window.stelloConsole?.metrics.firstRender;"
                "return m && m.sessions === arguments[0] ? m : null", sessions))
            results.append(metrics)
        driver.execute_script("sessionStorage.clear()")
        return results
    finally:
        driver.quit()


def summary(results: list[dict], name: str) -> dict[str, float]:
    values = [r[name] for r in results]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.runs < 1:
        parser.error("--sessions and --runs must be at least 1")

    # The embedded default: no database or Redis URL, the offline LLM, no background memory
    # work competing with the page.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLO_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"STELLO_LLM_PROVIDER": "offline", "STELLO_CONSOLIDATE_EVERY_N_TURNS": "0",
                "SECRET_KEY": env.get("SECRET_KEY") or "stello-bench-console-not-a-secret",
                "STELLO_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{args.port}"
    report: dict[str, Any] = {"sessions": args.sessions, "runs": args.runs,
                              "database": "sqlite (embedded default)"}
    manage("migrate", "--no-input", env=env)
    key = manage("createapikey", "bench-console", "--name", "bench/console.py",
                 env=env).strip().splitlines()[-1]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [PYTHON, "-m", "stello_project.serve", "daphne", "-b", "127.0.0.1", "-p",
         str(args.port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    space_id = None
    status = 0
    try:
        wait_until_answering(base, server)
        started = time.monotonic()
        space_id, _ = seed(base, key, args.sessions)
        report["seedSeconds"] = round(time.monotonic() - started, 1)
        results = measure(base, key, space_id, args.sessions, args.runs)
        report["firstRenderMs"] = {name: summary(results, name)
                                   for name in ("sinceNavigationMs", "totalMs", "fetchMs")}
        report["samples"] = results
    except Exception as exc:  # reported in the JSON; the clean-up below still runs
        report["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    finally:
        try:
            if space_id:
                call(base, key, "DELETE", f"/spaces/{space_id}")
        except Exception as exc:
            report.setdefault("error", f"clean-up: {exc}")
            status = 1
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        manage("revokeapikey", key.split("_")[1], env=env)  # stello_<prefix>_<secret>
        if status:
            log.seek(0)
            report["serverLog"] = log.read().decode(errors="replace")[-2000:]
        log.close()
    print(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())

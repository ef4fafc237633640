"""`stello_project.serve` builds the server command from the settings (the servers' behaviour
under these flags: tests/test_limits_servers.py)."""

from __future__ import annotations

import sys

from stello_project.serve import APP, command


def flag(cmd: list[str], name: str) -> str:
    return cmd[len(cmd) - 1 - cmd[::-1].index(name) + 1]  # the last one wins, as in the servers


def test_the_servers_get_the_frame_cap_and_pings_from_the_settings(settings) -> None:
    settings.STELLO = {**settings.STELLO, "WS_MAX_FRAME_BYTES": 3_000_000,
                       "WS_PING_INTERVAL_SECONDS": 2.5, "WS_PING_TIMEOUT_SECONDS": 4.0}
    uvicorn = command("uvicorn", ["--port", "8001"])
    assert uvicorn[:3] == [sys.executable, "-m", "uvicorn"] and uvicorn[-1] == APP
    assert flag(uvicorn, "--ws-max-size") == "6000000"
    assert flag(uvicorn, "--ws-ping-interval") == "2.5"
    assert flag(uvicorn, "--ws-ping-timeout") == "4.0"
    assert flag(uvicorn, "--http") == "stello_project.httpserver:HttpToolsProtocol"
    assert flag(uvicorn, "--ws") == "stello_project.wsserver:WebSocketProtocol"
    daphne = command("daphne", ["-p", "8000"])
    assert daphne[:3] == [sys.executable, "-m", "daphne"] and daphne[-1] == APP
    assert flag(daphne, "--websocket-max-message-size") == "6000000"
    assert flag(daphne, "--websocket-max-frame-size") == "6000000"
    assert flag(daphne, "--ping-interval") == "3"  # whole seconds, rounded up
    assert flag(daphne, "--ping-timeout") == "4"


def test_options_given_after_the_server_name_come_last_and_win(settings) -> None:
    cmd = command("uvicorn", ["--ws-max-size", "123"])
    assert flag(cmd, "--ws-max-size") == "123"

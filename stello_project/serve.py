"""Start the ASGI server with the limits of our settings applied to it.

    python -m stello_project.serve uvicorn --host 127.0.0.1 --port 8001   # production
    python -m stello_project.serve daphne -b 127.0.0.1 -p 8000            # development

The servers have limits of their own that sit in front of ours, so they are set from the
settings here (the arguments given after the server name come later, so they win):

- the largest WebSocket message the server accepts: twice STELLO_WS_MAX_FRAME_BYTES, so that
  a frame over our limit reaches the consumer and gets its `error` frame instead of the server
  closing the connection (daphne's own default is 1 MiB, uvicorn's 16 MiB);
- WebSocket keepalive pings every STELLO_WS_PING_INTERVAL_SECONDS; a connection that does not
  answer within STELLO_WS_PING_TIMEOUT_SECONDS is closed (half-open sockets);
- under uvicorn, `--http` is `stello_project.httpserver`'s protocol (httptools, plus a deadline
  for the request head, STELLO_HTTP_HEADER_TIMEOUT_SECONDS), with uvloop and without
  per-message deflate (our frames are small).

The process is replaced by the server (`exec`), so its pid is the server's.
"""

from __future__ import annotations

import math
import os
import sys

SERVERS = ("uvicorn", "daphne")
APP = "stello_project.asgi:application"


def server_flags(server: str) -> list[str]:
    """The command-line flags that carry our limits to `server`."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stello_project.settings")
    from django.conf import settings

    stello = settings.STELLO
    max_message = str(2 * stello["WS_MAX_FRAME_BYTES"])
    interval, timeout = stello["WS_PING_INTERVAL_SECONDS"], stello["WS_PING_TIMEOUT_SECONDS"]
    if server == "uvicorn":
        return ["--loop", "uvloop", "--http", "stello_project.httpserver:HttpToolsProtocol",
                "--ws", "stello_project.wsserver:WebSocketProtocol",
                "--ws-per-message-deflate", "false", "--ws-max-size", max_message,
                "--ws-ping-interval", str(interval), "--ws-ping-timeout", str(timeout)]
    return ["--websocket-max-message-size", max_message,
            "--websocket-max-frame-size", max_message,
            # daphne takes whole seconds
            "--ping-interval", str(math.ceil(interval)), "--ping-timeout", str(math.ceil(timeout))]


def command(server: str, args: list[str]) -> list[str]:
    """The full command: our flags, then the caller's, then the application (uvicorn wants it
    last; daphne takes it last too)."""
    return [sys.executable, "-m", server, *server_flags(server), *args, APP]


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in SERVERS:
        sys.exit(f"usage: python -m stello_project.serve {{{'|'.join(SERVERS)}}} [server options]")
    from stello_project.env import configuration_errors_in_one_line

    with configuration_errors_in_one_line():  # a bad setting: one line, before exec
        cmd = command(argv[0], argv[1:])
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])

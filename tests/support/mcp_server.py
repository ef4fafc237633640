"""A small MCP server for the tests, on the official SDK: `python mcp_server.py stdio` or
`python mcp_server.py http <port>` (streamable HTTP on 127.0.0.1:<port>/mcp).

Its tools misbehave on request, so the tests can show each failure is contained: `slow`
sleeps, `crash` kills the process, `fail` raises, `huge` returns a large text; `pid` tells
which process answered (connection reuse)."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("stello-test")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
async def slow(seconds: float, tag: str = "") -> str:
    """Sleep, then answer with the start and end times."""
    start = time.time()
    await asyncio.sleep(seconds)
    return f"{tag} {start} {time.time()}"


@server.tool()
def crash() -> str:
    """Kill the server process."""
    os._exit(3)


@server.tool()
def fail(reason: str) -> str:
    """Always fails with `reason`."""
    raise ToolError(reason)


@server.tool()
def huge(size: int) -> str:
    """A text of `size` characters."""
    return "x" * size


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")

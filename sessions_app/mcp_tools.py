"""Tools from Model Context Protocol servers (the official `mcp` SDK), per space.

The operator declares the servers (`STELLO_MCP_SERVERS`: a stdio command or a streamable HTTP
URL each); a space opts in by naming them in its config (`mcpServers`). Spaces never give a
command or a URL themselves: that would let any API user start processes on the server or
make it call arbitrary addresses.

Each space's agent holds one `MCPConnection` per server it uses: opened at its first turn,
reused by every later turn, closed when the agent pool evicts the agent (or the runtime
closes). The SDK's client must be entered and left by one task, so each connection runs in a
task of its own; turns only send requests through it.

Everything an MCP server can do wrong is contained: a server that cannot be reached, hangs,
crashes or lists malformed tools leaves that server's tools out of the turn (logged); a call
that fails, times out or returns too much becomes a tool error or a truncated result for the
LLM, and a connection that broke is opened again at the next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .engine.tools import Tool, ToolContext
from .engine.types import dumps_compact

logger = logging.getLogger("stello.mcp")

# What LLM providers accept as a function name.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEPARATOR = "__"  # `<server>__<tool>`: MCP tools never collide with built-ins or user tools


class MCPError(Exception):
    """An MCP server failed; the text goes to the LLM as the tool's error."""


@dataclass(frozen=True, slots=True)
class MCPServerSpec:
    name: str
    transport: Literal["stdio", "http"]
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = 30.0  # one tool call
    start_timeout_seconds: float = 30.0  # starting/connecting and listing the tools


def parse_servers(raw: Mapping[str, Any], *, timeout_seconds: float) -> dict[str, MCPServerSpec]:
    """`STELLO_MCP_SERVERS` checked; ValueError naming the entry otherwise."""
    servers = {}
    for name, entry in raw.items():
        where = f"STELLO_MCP_SERVERS[{name!r}]"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name) or SEPARATOR in name:
            raise ValueError(f"{where}: a server name is 1-32 letters, digits, '-' or '_' "
                             f"(no '{SEPARATOR}')")
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be an object")
        transport = entry.get("transport", "stdio" if "command" in entry else "http")
        timeout = entry.get("timeoutSeconds", timeout_seconds)
        start = entry.get("startTimeoutSeconds", 30.0)
        for key, value in (("timeoutSeconds", timeout), ("startTimeoutSeconds", start)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{where}.{key} must be a positive number")
        timeouts = {"timeout_seconds": float(timeout), "start_timeout_seconds": float(start)}
        if transport == "stdio":
            command, args, env = entry.get("command"), entry.get("args", []), entry.get("env")
            if not isinstance(command, str) or not command:
                raise ValueError(f"{where}.command must be a non-empty string")
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise ValueError(f"{where}.args must be a list of strings")
            if env is not None and not _string_map(env):
                raise ValueError(f"{where}.env must be an object of strings")
            servers[name] = MCPServerSpec(name, "stdio", command=command, args=tuple(args),
                                          env=env, **timeouts)
        elif transport == "http":
            url, headers = entry.get("url"), entry.get("headers", {})
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"{where}.url must be an http(s) URL")
            if not _string_map(headers):
                raise ValueError(f"{where}.headers must be an object of strings")
            servers[name] = MCPServerSpec(name, "http", url=url, headers=headers, **timeouts)
        else:
            raise ValueError(f'{where}.transport must be "stdio" or "http"')
    return servers


def _string_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def result_text(result: Any, max_chars: int) -> tuple[bool, Any]:
    """(is_error, value for the LLM) of a CallToolResult: the structured content when there
    is some, else the text of its content blocks; cut at `max_chars` with a note."""
    value: Any
    if result.structured_content is not None and not result.is_error:
        value = result.structured_content
        text = dumps_compact(value)
    else:
        parts = []
        for block in result.content:
            kind = getattr(block, "type", None)
            if kind == "text":
                parts.append(block.text)
            else:
                parts.append(f"[{kind} content]")
        text = value = "\n".join(parts)
    if len(text) > max_chars:
        value = (text[:max_chars] + f"\n[truncated: the result was {len(text)} characters, "
                 f"{max_chars} are shown]")
    return bool(result.is_error), value


class MCPConnection:
    """One live client connection to one MCP server (see the module's docstring)."""

    def __init__(self, spec: MCPServerSpec, *, max_result_chars: int) -> None:
        self.spec = spec
        self.max_result_chars = max_result_chars
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[list[Tool]] | None = None
        self._closing = asyncio.Event()
        self._broken = False  # a call saw the connection fail: reopen it at the next listing

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self._client is not None

    async def tools(self) -> list[Tool]:
        """The server's tools (listed once per connection); opens the connection if needed.
        Raises MCPError when the server cannot be reached or listed in time."""
        if self._task is not None and (self._broken or self._task.done()):
            await self.aclose()  # crashed or dropped: a new connection for this turn
        if self._task is None:
            self._broken = False
            self._closing = asyncio.Event()
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.get_running_loop().create_task(self._run(self._ready))
        assert self._ready is not None
        seconds = self.spec.start_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.shield(self._ready)
        except TimeoutError:
            await self.aclose()
            raise MCPError(f"MCP server {self.spec.name!r} did not start within "
                           f"{seconds:g} s") from None

    async def _run(self, ready: asyncio.Future[list[Tool]]) -> None:
        import mcp

        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await stack.enter_async_context(mcp.Client(self._target(stack)))
                listed = await self._list(client)
                self._client = client
                if not ready.done():
                    ready.set_result(listed)
                await self._closing.wait()
        except BaseException as exc:  # every failure is reported to the waiter
            if not ready.done():
                ready.set_exception(MCPError(f"MCP server {self.spec.name!r} failed: "
                                             f"{_describe(exc)}"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not self._closing.is_set():
                logger.warning("MCP server %r connection ended: %s", self.spec.name,
                               _describe(exc))
        finally:
            self._client = None
            if not ready.done():
                ready.set_exception(MCPError(f"MCP server {self.spec.name!r} closed"))
            if not ready.cancelled():
                ready.exception()  # a start nobody waits for any more is not an error to log

    def _target(self, stack: contextlib.AsyncExitStack) -> Any:
        import mcp
        from mcp.client.stdio import get_default_environment

        spec = self.spec
        if spec.transport == "stdio":
            env = None if spec.env is None else {**get_default_environment(), **spec.env}
            return mcp.StdioServerParameters(command=spec.command, args=list(spec.args),
                                             env=env)
        if not spec.headers:
            return spec.url
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers=dict(spec.headers))
        stack.push_async_callback(http.aclose)
        return streamable_http_client(spec.url, http_client=http)

    async def _list(self, client: Any) -> list[Tool]:
        tools: list[Tool] = []
        cursor = None
        for _ in range(100):  # a server that paginates forever cannot hang the turn
            page = await client.list_tools(cursor=cursor)
            for listed in page.tools:
                made = self._tool(listed)
                if made is not None:
                    tools.append(made)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    def _tool(self, listed: Any) -> Tool | None:
        name = f"{self.spec.name}{SEPARATOR}{listed.name}"
        schema = listed.input_schema
        if not TOOL_NAME.fullmatch(name):
            logger.warning("MCP server %r: tool %r left out (its name is not usable by an LLM)",
                           self.spec.name, listed.name)
            return None
        if not isinstance(schema, Mapping) or schema.get("type") != "object":
            logger.warning("MCP server %r: tool %r left out (its input schema is not a JSON "
                           "object schema)", self.spec.name, listed.name)
            return None
        remote = listed.name

        async def call(args: dict[str, Any], context: ToolContext) -> Any:
            return await self.call(remote, args)

        return Tool(name=name, description=(listed.description or listed.name)[:4000],
                    input_schema=dict(schema), fn=call)

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        client = self._client
        if client is None or self._broken:
            raise MCPError(f"MCP server {self.spec.name!r} is not connected (it will be "
                           "reconnected at the next turn)")
        seconds = self.spec.timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                result = await client.call_tool(name, args)
        except TimeoutError:
            raise MCPError(f"MCP tool {name!r} did not answer within {seconds:g} s") from None
        except MCPError:
            raise
        except Exception as exc:
            if _connection_lost(exc):
                self._broken = True
            if self._broken or not self.alive:
                raise MCPError(f"MCP server {self.spec.name!r} stopped during the call to "
                               f"{name!r}") from exc
            raise MCPError(f"MCP tool {name!r} failed: {_describe(exc)}") from exc
        is_error, value = result_text(result, self.max_result_chars)
        if is_error:
            raise MCPError(value if isinstance(value, str) else dumps_compact(value))
        return value

    async def aclose(self) -> None:
        self._closing.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            except Exception:  # closing never fails
                pass


def _connection_lost(exc: Exception) -> bool:
    import anyio
    from mcp.shared.exceptions import MCPError as SDKError
    from mcp.types.jsonrpc import CONNECTION_CLOSED

    if isinstance(exc, SDKError):
        return exc.error.code == CONNECTION_CLOSED
    return isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError | OSError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return str(exc) or type(exc).__name__


class SpaceMCPTools:
    """The MCP connections of one space's agent and the tools they give a turn."""

    def __init__(self, specs: Sequence[MCPServerSpec], *, max_result_chars: int) -> None:
        self.connections = [MCPConnection(spec, max_result_chars=max_result_chars)
                            for spec in specs]

    def __bool__(self) -> bool:
        return bool(self.connections)

    async def tools(self) -> list[Tool]:
        """Every reachable server's tools, listed concurrently; a failing server is logged
        and left out of this turn."""
        found = await asyncio.gather(*(c.tools() for c in self.connections),
                                     return_exceptions=True)
        tools: list[Tool] = []
        for connection, result in zip(self.connections, found, strict=True):
            if isinstance(result, BaseException):
                logger.warning("MCP server %r left out of this turn: %s",
                               connection.spec.name, _describe(result))
                continue
            tools.extend(result)
        return tools

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.connections), return_exceptions=True)

"""MCP tool servers: a real server (tests/support/mcp_server.py, on the official SDK) started
by the tests, over stdio and streamable HTTP; its tools reach the LLM and its failures are
contained as tool errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sessions_app.engine.tools import ToolContext
from sessions_app.engine.types import ToolCall
from sessions_app.mcp_tools import MCPError, MCPServerSpec, SpaceMCPTools, parse_servers
from tests.engine.fakes import ScriptedLLM, call, make_agent, reply

SERVER = str(Path(__file__).parent / "support" / "mcp_server.py")
CTX = ToolContext(space_id="s", session_id="x")


def child_env() -> dict[str, str]:
    # The server needs the same import path as the tests (the SDK may live outside the venv).
    return {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def stdio_spec(name: str = "probe", timeout: float = 10.0) -> MCPServerSpec:
    return MCPServerSpec(name, "stdio", command=sys.executable, args=(SERVER,),
                         env=child_env(), timeout_seconds=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server():
    port = free_port()
    process = subprocess.Popen([sys.executable, SERVER, "http", str(port)],
                               env={**os.environ, **child_env()},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "no MCP server"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    process.terminate()
    process.wait(10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state says it has exited.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return False
    return state != "Z"


async def run(box_tools, name: str, **args):
    tool = {t.name: t for t in box_tools}[name]
    return await tool.fn(args, CTX)


async def test_a_stdio_servers_tools_are_listed_with_their_schemas_and_called() -> None:
    source = SpaceMCPTools([stdio_spec()], max_result_chars=1000)
    try:
        tools = await source.tools()
        by_name = {t.name: t for t in tools}
        assert {"probe__add", "probe__slow", "probe__crash", "probe__huge"} <= set(by_name)
        schema = by_name["probe__add"].input_schema
        assert schema["type"] == "object" and set(schema["required"]) == {"a", "b"}
        assert by_name["probe__add"].description == "Add two integers."
        assert await run(tools, "probe__add", a=2, b=40) == {"result": 42}
    finally:
        await source.aclose()


async def test_failures_hangs_and_huge_results_are_contained() -> None:
    source = SpaceMCPTools([stdio_spec(timeout=3.0)], max_result_chars=1000)
    try:
        tools = await source.tools()
        with pytest.raises(MCPError, match="boom on purpose"):
            await run(tools, "probe__fail", reason="boom on purpose")
        with pytest.raises(MCPError, match=r"'slow' did not answer within 3 s"):
            await run(tools, "probe__slow", seconds=30)
        big = await run(tools, "probe__huge", size=50_000)
        text = big if isinstance(big, str) else str(big)
        assert len(text) < 1200 and "[truncated: the result was" in text
        # The connection still serves after all that.
        assert await run(tools, "probe__add", a=1, b=1) == {"result": 2}
    finally:
        await source.aclose()


async def test_a_crashed_server_is_a_tool_error_then_reconnected() -> None:
    source = SpaceMCPTools([stdio_spec()], max_result_chars=1000)
    try:
        tools = await source.tools()
        first = (await run(tools, "probe__pid"))["result"]
        with pytest.raises(MCPError, match="'probe' stopped during the call to 'crash'"):
            await run(tools, "probe__crash")
        with pytest.raises(MCPError, match="not connected"):
            await run(tools, "probe__add", a=1, b=2)
        tools = await source.tools()  # the next turn opens a new connection
        assert (await run(tools, "probe__pid"))["result"] != first
    finally:
        await source.aclose()


async def test_an_unreachable_or_broken_server_leaves_only_its_own_tools_out() -> None:
    broken = MCPServerSpec("broken", "stdio", command=sys.executable,
                           args=("-c", "import sys; sys.exit(1)"), timeout_seconds=5)
    hanging = MCPServerSpec("hangs", "stdio", command=sys.executable,
                            args=("-c", "import time; time.sleep(60)"),
                            start_timeout_seconds=0.5)
    source = SpaceMCPTools([broken, hanging, stdio_spec()], max_result_chars=1000)
    try:
        started = time.monotonic()
        names = {t.name for t in await source.tools()}
        assert time.monotonic() - started < 10
        assert "probe__add" in names
        assert not any(n.startswith(("broken__", "hangs__")) for n in names)
    finally:
        await source.aclose()


def test_malformed_tools_are_left_out() -> None:
    from sessions_app.mcp_tools import MCPConnection

    connection = MCPConnection(stdio_spec(), max_result_chars=10)
    listed = [SimpleNamespace(name="ok", input_schema={"type": "object"}, description=None),
              SimpleNamespace(name="bad schema", input_schema={"type": "object"}, description=""),
              SimpleNamespace(name="array", input_schema={"type": "array"}, description=""),
              SimpleNamespace(name="none", input_schema=None, description=""),
              SimpleNamespace(name="y" * 80, input_schema={"type": "object"}, description="")]
    made = [connection._tool(t) for t in listed]
    assert [t.name if t else None for t in made] == ["probe__ok", None, None, None, None]
    assert made[0].description == "ok"


async def test_the_streamable_http_transport_serves_tools(http_server) -> None:
    spec = MCPServerSpec("web", "http", url=http_server, headers={"X-Test": "1"},
                         timeout_seconds=10)
    source = SpaceMCPTools([spec], max_result_chars=1000)
    try:
        tools = await source.tools()
        assert await run(tools, "web__add", a=5, b=6) == {"result": 11}
    finally:
        await source.aclose()


async def test_an_mcp_server_serves_a_turn_and_its_connection_is_reused_then_closed() -> None:
    source = SpaceMCPTools([stdio_spec()], max_result_chars=1000)
    llm = ScriptedLLM(
        reply(None, call("probe__add", "c1", a=20, b=22)), reply("It is 42."),
        reply(None, call("probe__pid", "c2")), reply("pid told"),
        reply(None, call("probe__pid", "c3")), reply("pid again"),
    )
    h = make_agent(llm=llm)
    h.agent.tool_source = source
    child = await h.child()

    result = await h.agent.turn(child, "add 20 and 22")
    assert result.final_content == "It is 42."
    assert "probe__add" in llm.calls[0].tool_names
    tools = [m for m in h.store.records(child) if m.role == "tool"]
    assert tools[0].content == '{"result":42}'

    await h.agent.turn(child, "pid?")
    await h.agent.turn(child, "pid again?")
    pids = [m.content for m in h.store.records(child) if m.role == "tool"][1:]
    assert pids[0] == pids[1]  # one server process served both turns
    pid = int(pids[0].split(":")[1].rstrip("}"))
    assert alive(pid)

    await h.agent.aclose()  # what the agent pool does on eviction
    assert not alive(pid)  # closing waits for the server process to exit


async def test_parallel_mcp_calls_overlap() -> None:
    source = SpaceMCPTools([stdio_spec()], max_result_chars=1000)
    try:
        tools = await source.tools()
        box_calls = [ToolCall(f"c{n}", "probe__slow", {"seconds": 0.5, "tag": str(n)})
                     for n in range(3)]
        from sessions_app.engine.tools import ToolBox

        results = await ToolBox.of(tools).run_all(box_calls, CTX)
        spans = [tuple(map(float, r.data["result"].split()[1:])) for r in results]
        assert max(s[0] for s in spans) < min(s[1] for s in spans)  # all three overlapped
    finally:
        await source.aclose()


def test_server_settings_are_checked() -> None:
    ok = parse_servers({"a": {"command": "x"}, "b": {"url": "http://h/mcp"}},
                       timeout_seconds=5)
    assert ok["a"].transport == "stdio" and ok["b"].transport == "http"
    for bad, message in [
        ({"a b": {"command": "x"}}, "a server name"),
        ({"a": {"transport": "stdio"}}, ".command"),
        ({"a": {"url": "ftp://x"}}, ".url"),
        ({"a": {"command": "x", "args": "y"}}, ".args"),
        ({"a": {"command": "x", "timeoutSeconds": 0}}, ".timeoutSeconds"),
        ({"a": {"command": "x", "startTimeoutSeconds": "1"}}, ".startTimeoutSeconds"),
        ({"a": {"transport": "sse", "url": "http://x"}}, ".transport"),
    ]:
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            parse_servers(bad, timeout_seconds=5)

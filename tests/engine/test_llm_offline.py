"""OfflineLLM (the default, network-free provider), the settings and the factory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sessions_app.engine.llm import LLMSettings, build_llm, describe, load_script
from sessions_app.engine.llm.offline import OfflineLLM, split_words
from sessions_app.engine.types import LLMResponse, Message, ToolCall, ToolSpec, Usage
from tests.support.llm_servers import assemble_tool_calls, collect_stream

SEARCH = ToolSpec("search", "Search", {"type": "object"})
CHAT = [
    Message("system", "be nice"),
    Message("user", "first"),
    Message("assistant", "echo: first"),
    Message("user", "hello  world"),
]


# --- echo --------------------------------------------------------------------------------------


async def test_complete_echoes_the_last_user_message() -> None:
    response = await OfflineLLM().complete(CHAT, tools=[SEARCH])
    assert response.content == "echo: hello  world"
    assert response.tool_calls == ()
    # ceil((7 + 5 + 11 + 12) / 4) and ceil(len("echo: hello  world") / 4)
    assert response.usage == Usage(prompt_tokens=9, completion_tokens=5)


async def test_trailing_tool_results_are_echoed() -> None:
    messages = [
        Message("user", "look it up"),
        Message(
            "assistant", "", tool_calls=(ToolCall("c1", "search", {}), ToolCall("c2", "x", {}))
        ),
        Message("tool", "result one", tool_call_id="c1"),
        Message("tool", "result two", tool_call_id="c2"),
    ]
    response = await OfflineLLM().complete(messages, tools=[SEARCH])
    assert response.content == "echo: result one result two"


async def test_no_user_message() -> None:
    response = await OfflineLLM().complete([Message("system", "only a system prompt")])
    assert response.content == "echo: "


async def test_stream_word_by_word_then_usage() -> None:
    llm = OfflineLLM()
    deltas = await collect_stream(llm, CHAT, [SEARCH])
    texts = [d.text for d in deltas[:-1]]
    assert texts == ["echo:", " hello", "  world"]
    assert all(texts)
    assert deltas[-1].text == "" and deltas[-1].tool_calls == ()
    assert deltas[-1].usage == (await llm.complete(CHAT, tools=[SEARCH])).usage


@pytest.mark.parametrize(
    "text", ["echo: a", "  leading", "trailing  ", "   ", "one\ntwo\tthree", "x", ""]
)
def test_split_words_concatenates_to_the_text(text: str) -> None:
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert all(pieces)


async def test_deterministic() -> None:
    first = await OfflineLLM().complete(CHAT)
    second = await OfflineLLM().complete(CHAT)
    assert first == second


# --- script ------------------------------------------------------------------------------------


async def test_script_in_order_then_echo() -> None:
    llm = OfflineLLM(
        script=[
            LLMResponse(None, (ToolCall("t1", "search", {"q": "cats"}),)),
            LLMResponse("done", usage=Usage(1, 2)),
        ]
    )
    first = await llm.complete(CHAT, tools=[SEARCH])
    assert first.content is None
    assert first.tool_calls == (ToolCall("t1", "search", {"q": "cats"}),)
    assert first.usage is not None
    second = await llm.complete(CHAT, tools=[SEARCH])
    assert (second.content, second.usage) == ("done", Usage(1, 2))
    assert llm.remaining_script == 0
    assert (await llm.complete(CHAT, tools=[SEARCH])).content == "echo: hello  world"
    assert len(llm.calls) == 3


async def test_scripted_stream_with_tool_calls() -> None:
    llm = OfflineLLM(
        script=[
            LLMResponse(
                "Searching now",
                (
                    ToolCall("t1", "search", {"q": "cats"}),
                    ToolCall("t2", "search", {"q": "dogs", "n": [1, 2]}),
                ),
            )
        ]
    )
    deltas = await collect_stream(llm, CHAT, [SEARCH])
    assert [d.text for d in deltas if d.text] == ["Searching", " now"]
    pieces = [p for d in deltas for p in d.tool_calls]
    first = [p for p in pieces if p.index == 0]
    assert (first[0].id, first[0].name, first[0].arguments) == ("t1", "search", "")
    assert len([p for p in first[1:] if p.arguments]) >= 2
    assert all(p.id is None and p.name is None for p in first[1:])
    assert assemble_tool_calls(deltas) == [
        {"id": "t1", "name": "search", "input": {"q": "cats"}},
        {"id": "t2", "name": "search", "input": {"q": "dogs", "n": [1, 2]}},
    ]
    assert deltas[-1].usage is not None


async def test_script_path_through_build_llm(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(
        json.dumps(
            [
                {"content": None, "toolCalls": [{"id": "a", "name": "search", "input": {"q": 1}}]},
                {"content": "final", "usage": {"promptTokens": 3, "completionTokens": 4}},
                {"content": "无工具"},
            ]
        ),
        encoding="utf-8",
    )
    llm = build_llm(LLMSettings(provider="offline", model="offline", script_path=str(path)))
    assert isinstance(llm, OfflineLLM)
    first = await llm.complete(CHAT, tools=[SEARCH])
    assert first.tool_calls == (ToolCall("a", "search", {"q": 1}),)
    second = await llm.complete(CHAT, tools=[SEARCH])
    assert (second.content, second.usage) == ("final", Usage(3, 4))
    assert (await llm.complete(CHAT)).content == "无工具"
    assert (await llm.complete(CHAT)).content == "echo: hello  world"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"content": "x"}',
        '[{"content": 3}]',
        '[{"content": null, "toolCalls": [{"id": "a"}]}]',
        '[{"content": null, "toolCalls": [{"id": "a", "name": "n", "input": [1]}]}]',
    ],
)
def test_bad_script_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "script.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="LLM script"):
        load_script(str(path))


def test_missing_script_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the LLM script"):
        build_llm(LLMSettings(script_path=str(tmp_path / "missing.json")))


# --- memory calls ------------------------------------------------------------------------------


def integration_text(children: list[tuple[str, str, str]], synthesis: str | None = None) -> str:
    """The user text of the original server's default integrate function, byte for byte."""
    parts = [f"当前综合:\n{synthesis}"] if synthesis else []
    lines = "\n".join(f"- [sessionId={sid}] {label}: {memory}" for sid, label, memory in children)
    parts.append("子 Session 摘要:\n" + lines)
    return "\n\n".join(parts)


async def test_integration_call_answers_json() -> None:
    children = [
        ("3f1c-aa", "Travel plans", "Going to Lisbon in May: flights booked."),
        ("9b2d-bb", "Budget", "Total 2000 EUR; hotel: 600."),
    ]
    messages = [Message("system", "integrate"), Message("user", integration_text(children, "old"))]
    response = await OfflineLLM().complete(messages)
    assert response.content is not None
    data = json.loads(response.content)
    assert isinstance(data["synthesis"], str) and data["synthesis"]
    assert [i["sessionId"] for i in data["insights"]] == ["3f1c-aa", "9b2d-bb"]
    assert "Travel plans" in data["insights"][0]["content"]
    assert "Budget" in data["insights"][1]["content"]
    assert response == await OfflineLLM().complete(messages)


async def test_integration_call_with_odd_lines() -> None:
    text = integration_text([("id-1", "Q3:plan", ""), ("id-2", "Notes", "a: b: c")])
    response = await OfflineLLM().complete([Message("user", text + "\nnot a child line")])
    assert response.content is not None
    insights = json.loads(response.content)["insights"]
    assert [i["sessionId"] for i in insights] == ["id-1", "id-2"]
    assert "Q3:plan" in insights[0]["content"]
    assert "Notes" in insights[1]["content"]


async def test_integration_call_without_children() -> None:
    response = await OfflineLLM().complete([Message("user", integration_text([]))])
    assert response.content is not None
    assert json.loads(response.content)["insights"] == []


async def test_consolidation_call_answers_a_summary() -> None:
    text = "对话记录:\nuser: a1\nassistant: echo: a1\nuser: a2\nassistant: echo: a2\ntool: ok"
    response = await OfflineLLM().complete([Message("system", "C"), Message("user", text)])
    assert response.content == "Summary of 5 messages. Last user message: a2"


async def test_consolidation_over_a_current_memory() -> None:
    text = "当前摘要:\nthe old memory\n\n对话记录:\nuser: " + "x" * 300 + "\nassistant: ok"
    response = await OfflineLLM().complete([Message("system", "C"), Message("user", text)])
    assert response.content == (
        "Summary of 2 messages (updating an earlier summary). Last user message: " + "x" * 200
    )


async def test_memory_calls_do_not_consume_the_script() -> None:
    llm = OfflineLLM(script=[LLMResponse("scripted")])
    summary = await llm.complete([Message("user", "对话记录:\nuser: hi")])
    assert summary.content == "Summary of 1 messages. Last user message: hi"
    assert llm.remaining_script == 1
    assert (await llm.complete(CHAT, tools=[SEARCH])).content == "scripted"


async def test_memory_calls_can_be_scripted() -> None:
    llm = OfflineLLM(script=[LLMResponse("not json")], script_memory_calls=True)
    response = await llm.complete([Message("user", integration_text([("a", "b", "c")]))])
    assert response.content == "not json"


async def test_no_sniffing_when_tools_are_given() -> None:
    response = await OfflineLLM().complete([Message("user", "对话记录: hi")], tools=[SEARCH])
    assert response.content == "echo: 对话记录: hi"


# --- settings and factory ----------------------------------------------------------------------


def test_default_settings_build_the_offline_llm() -> None:
    settings = LLMSettings()
    llm = build_llm(settings)
    assert isinstance(llm, OfflineLLM)
    assert (llm.provider, llm.model, llm.max_context_tokens) == ("offline", "offline", 128000)
    assert describe(settings) == "LLM provider=offline model=offline max_context_tokens=128000"


def test_describe_never_prints_the_key() -> None:
    settings = LLMSettings(
        provider="openai", model="gpt-4o", base_url="http://llm:8000/v1", api_key="sk-secret"
    )
    line = describe(settings)
    assert line.startswith("LLM provider=openai model=gpt-4o base_url=http://llm:8000/v1")
    assert "api_key=set" in line
    assert "sk-secret" not in line


@pytest.mark.parametrize(
    "overrides",
    [
        {"provider": "cohere"},
        {"model": ""},
        {"max_context_tokens": 0},
        {"timeout_seconds": 0},
        {"max_retries": -1},
    ],
)
def test_invalid_settings(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LLMSettings(**overrides)  # type: ignore[arg-type]


def test_importing_the_engine_llm_package_stays_cheap() -> None:
    code = (
        "import sys, sessions_app.engine.llm, sessions_app.engine.llm.offline; "
        "print(sorted(m for m in ('openai', 'anthropic', 'httpx2', 'django') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

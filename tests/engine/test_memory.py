"""Consolidation and integration: exact messages, `<think>` cleaning, lenient JSON, prompts."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from sessions_app.engine.memory import (
    consolidate,
    consolidation_messages,
    default_compress_prompt,
    default_consolidate_prompt,
    default_integrate_prompt,
    integrate,
    integration_messages,
    parse_integration,
    records_within_budget,
    resolve_prompt,
    strip_think,
)
from sessions_app.engine.types import (
    ChildMemory,
    Insight,
    IntegrationResult,
    LLMResponse,
    Message,
    ToolCall,
    ToolSpec,
)


class RecordingLLM:
    """Returns scripted contents in order and records every call."""

    provider = "fake"
    model = "fake-model"
    max_context_tokens = 8000

    def __init__(self, *contents: str | None) -> None:
        self.contents = list(contents)
        self.calls: list[tuple[list[Message], tuple[ToolSpec, ...]]] = []

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        self.calls.append((list(messages), tuple(tools)))
        return LLMResponse(content=self.contents.pop(0))

    async def aclose(self) -> None:
        return None


HISTORY = (
    Message("user", "a1"),
    Message("assistant", "echo: a1"),
    Message("user", "a2"),
    Message(
        "assistant",
        "",
        tool_calls=(ToolCall(id="c1", name="lookup", input={"q": "x"}),),
    ),
    Message("tool", '{"found":true}', tool_call_id="c1"),
    Message("assistant", "done"),
)
HISTORY_TEXT = (
    "Conversation:\n"
    "user: a1\n"
    "assistant: echo: a1\n"
    "user: a2\n"
    "assistant: \n"
    'tool: {"found":true}\n'
    "assistant: done"
)
CHILDREN = (
    ChildMemory(session_id="sess-1", label="选校", memory="已完成第一轮筛选"),
    ChildMemory(session_id="sess-2", label="文书", memory="PS 初稿待修改"),
)


# --- consolidation messages -------------------------------------------------------------


def test_consolidation_sends_the_prompt_then_the_whole_transcript_with_tool_rows() -> None:
    assert consolidation_messages("C", None, HISTORY) == [
        Message("system", "C"),
        Message("user", HISTORY_TEXT),
    ]


def test_consolidation_puts_the_current_memory_first_separated_by_a_blank_line() -> None:
    messages = consolidation_messages("C", "<old>", HISTORY[:3])
    assert messages == [
        Message("system", "C"),
        Message(
            "user",
            "Current summary:\n<old>\n\nConversation:\nuser: a1\nassistant: echo: a1\nuser: a2",
        ),
    ]


def test_consolidation_leaves_out_an_empty_current_memory() -> None:
    messages = consolidation_messages("C", "", HISTORY[:1])
    assert messages[1] == Message("user", "Conversation:\nuser: a1")


def test_consolidation_of_an_empty_history_still_sends_the_transcript_header() -> None:
    assert consolidation_messages("C", None, ())[1] == Message("user", "Conversation:\n")


async def test_consolidate_calls_the_llm_once_without_tools_and_cleans_the_answer() -> None:
    llm = RecordingLLM("<think>hmm</think>\n  New memory. ")
    result = await consolidate(llm, "C", "<old>", HISTORY)
    assert result == "New memory."
    assert llm.calls == [(consolidation_messages("C", "<old>", HISTORY), ())]


async def test_consolidate_turns_a_missing_answer_into_an_empty_string() -> None:
    assert await consolidate(RecordingLLM(None), "C", None, HISTORY) == ""


# --- integration messages ---------------------------------------------------------------


def test_integration_lists_each_child_with_its_session_id_label_and_memory() -> None:
    messages = integration_messages("I", CHILDREN, None)
    assert messages[0] == Message("system", "I")
    assert "[sessionId=sess-1] 选校: 已完成第一轮筛选" in messages[1].content
    assert "[sessionId=sess-2] 文书: PS 初稿待修改" in messages[1].content
    assert messages[1] == Message(
        "user",
        "Child session summaries:\n"
        "- [sessionId=sess-1] 选校: 已完成第一轮筛选\n"
        "- [sessionId=sess-2] 文书: PS 初稿待修改",
    )


def test_integration_puts_the_current_synthesis_first_separated_by_a_blank_line() -> None:
    messages = integration_messages("I", CHILDREN[:1], "old synthesis")
    assert messages[1] == Message(
        "user",
        "Current synthesis:\nold synthesis\n\nChild session summaries:\n"
        "- [sessionId=sess-1] 选校: 已完成第一轮筛选",
    )


def test_integration_without_children_ends_the_header_with_an_empty_line() -> None:
    assert integration_messages("I", (), None)[1] == Message("user", "Child session summaries:\n")
    assert integration_messages("I", (), "S")[1] == Message(
        "user", "Current synthesis:\nS\n\nChild session summaries:\n"
    )


def test_integration_leaves_out_an_empty_current_synthesis() -> None:
    assert integration_messages("I", (), "")[1] == Message("user", "Child session summaries:\n")


async def test_integrate_calls_the_llm_once_and_keeps_insights_for_known_children() -> None:
    answer = (
        '<think>plan</think>{"synthesis": "overall", "insights": ['
        '{"sessionId": "sess-1", "content": "look at essays"},'
        '{"sessionId": "ghost", "content": "nobody"}]}'
    )
    llm = RecordingLLM(answer)
    result = await integrate(llm, "I", CHILDREN, "old")
    assert result == IntegrationResult(
        synthesis="overall", insights=(Insight("sess-1", "look at essays"),)
    )
    assert llm.calls == [(integration_messages("I", CHILDREN, "old"), ())]


async def test_integrate_with_no_answer_gives_an_empty_synthesis() -> None:
    assert await integrate(RecordingLLM(None), "I", CHILDREN, None) == IntegrationResult("", ())


# --- <think> cleaning -------------------------------------------------------------------


def test_strip_think_removes_every_block_and_the_whitespace_after_it() -> None:
    text = "<think>one</think>\n\nA <think>two</think>   B <think>\nthree\nlines\n</think>\n C  \n"
    assert strip_think(text) == "A B C"


def test_strip_think_is_not_greedy_across_blocks() -> None:
    assert strip_think("<think>x</think>keep<think>y</think>") == "keep"


def test_strip_think_leaves_plain_text_alone_apart_from_outer_whitespace() -> None:
    assert strip_think("  plain\ntext  ") == "plain\ntext"


# --- lenient integration JSON -----------------------------------------------------------

IDS = {"sess-1", "sess-2"}


def test_an_answer_without_braces_becomes_the_synthesis() -> None:
    assert parse_integration("<think>x</think> just prose ", IDS) == IntegrationResult(
        "just prose", ()
    )


def test_broken_json_becomes_the_synthesis_as_cleaned_text() -> None:
    assert parse_integration('{"synthesis": "x",', IDS) == IntegrationResult(
        '{"synthesis": "x",', ()
    )
    assert parse_integration("} then {", IDS) == IntegrationResult("} then {", ())


def test_two_objects_side_by_side_do_not_parse_and_become_the_synthesis() -> None:
    assert parse_integration('{"a":1}, {"b":2}', IDS) == IntegrationResult('{"a":1}, {"b":2}', ())


def test_missing_insights_mean_no_insights() -> None:
    assert parse_integration('{"synthesis": "S"}', IDS) == IntegrationResult("S", ())


def test_missing_or_non_string_synthesis_defaults_to_empty() -> None:
    answer = '{"insights": [{"sessionId": "sess-2", "content": "c"}]}'
    assert parse_integration(answer, IDS) == IntegrationResult("", (Insight("sess-2", "c"),))
    assert parse_integration('{"synthesis": 42}', IDS) == IntegrationResult("", ())


def test_insights_that_are_not_a_list_are_ignored() -> None:
    assert parse_integration('{"synthesis": "S", "insights": {"x": 1}}', IDS).insights == ()


def test_malformed_insight_entries_are_dropped() -> None:
    answer = """{"synthesis": "S", "insights": [
        "text",
        {"sessionId": "sess-1", "content": 3},
        {"sessionId": 1, "content": "c"},
        {"content": "no id"},
        {"sessionId": "sess-1"},
        {"sessionId": "unknown", "content": "c"},
        {"sessionId": "sess-2", "content": "kept"}
    ]}"""
    assert parse_integration(answer, IDS) == IntegrationResult("S", (Insight("sess-2", "kept"),))


def test_the_last_insight_wins_when_a_session_id_repeats() -> None:
    answer = (
        '{"synthesis": "S", "insights": ['
        '{"sessionId": "sess-1", "content": "first"},'
        '{"sessionId": "sess-2", "content": "two"},'
        '{"sessionId": "sess-1", "content": "second"}]}'
    )
    assert parse_integration(answer, IDS).insights == (
        Insight("sess-2", "two"),
        Insight("sess-1", "second"),
    )


def test_prose_around_the_json_is_ignored() -> None:
    answer = (
        'Here you go:\n```json\n{"synthesis": "S", "insights": '
        '[{"sessionId": "sess-1", "content": "c"}]}\n```\nHope it helps.'
    )
    assert parse_integration(answer, IDS) == IntegrationResult("S", (Insight("sess-1", "c"),))


def test_braces_inside_think_blocks_do_not_count() -> None:
    answer = '<think>{"synthesis": "draft"}</think>{"synthesis": "final"}'
    assert parse_integration(answer, IDS) == IntegrationResult("final", ())


# --- prompts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_slot", "space_column", "expected"),
    [
        ("session", "space", "session"),
        (None, "space", "space"),
        ("", "space", "space"),
        ("   ", "space", "space"),
        (None, None, "default"),
        ("", "", "default"),
    ],
)
def test_the_first_non_empty_prompt_wins(
    session_slot: str | None, space_column: str | None, expected: str
) -> None:
    assert resolve_prompt(session_slot, space_column, "default") == expected


def test_default_prompts_answer_in_the_requested_language() -> None:
    for make in (default_consolidate_prompt, default_integrate_prompt, default_compress_prompt):
        assert make("French").rstrip().endswith("Answer in French.")
        assert "Answer in" not in make()  # English is the wording's own language


def test_a_language_with_its_own_wording_gets_prompts_and_headings_in_that_language() -> None:
    # Before, the English prompts carried Chinese headings whatever the language setting.
    english = consolidation_messages(default_consolidate_prompt("English"), "old", HISTORY[:1])
    assert english[1].content == "Current summary:\nold\n\nConversation:\nuser: a1"
    assert not re.search(r"[\u4e00-\u9fff]", english[0].content + english[1].content)

    chinese = consolidation_messages(
        default_consolidate_prompt("Chinese"), "旧摘要", HISTORY[:1], "Chinese"
    )
    assert chinese[1].content == "当前摘要:\n旧摘要\n\n对话记录:\nuser: a1"
    assert not re.search(r"[A-Za-z]{4,}", chinese[0].content)  # no English words
    merged = integration_messages(
        default_integrate_prompt("zh"), CHILDREN, "旧综合", "zh"
    )[1].content
    assert merged.startswith("当前综合:\n旧综合\n\n子 Session 摘要:\n")
    assert not re.search(r"[A-Za-z]{4,}", default_compress_prompt("中文"))


def test_records_within_budget_takes_the_oldest_records_that_fit_and_at_least_one() -> None:
    llm = RecordingLLM()
    llm.max_context_tokens = 100  # 80 usable; the prompt and headings take a few
    big = Message("user", "x" * 200)  # 50 tokens each
    assert records_within_budget(llm, "P", None, [big, big, big]) == 1
    small = Message("user", "y" * 20)
    assert records_within_budget(llm, "P", None, [small] * 3) == 3
    huge = Message("user", "z" * 10_000)
    assert records_within_budget(llm, "P", None, [huge, small]) == 1


def test_the_default_integrate_prompt_demands_the_json_shape_and_verbatim_ids() -> None:
    prompt = default_integrate_prompt()
    assert '{"synthesis": "...", "insights": [{"sessionId": "...", "content": "..."}]}' in prompt
    assert "copied character for character" in prompt

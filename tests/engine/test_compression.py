"""Context compression: threshold, window boundaries, summary placement and the cache."""

from __future__ import annotations

from collections.abc import Sequence

from sessions_app.engine.compression import (
    compress_context,
    compression_messages,
    estimate_tokens,
    history_digest,
    summarize,
)
from sessions_app.engine.types import (
    CompressionCache,
    LLMResponse,
    Message,
    ToolCall,
    ToolSpec,
    dumps_compact,
)

# max_context_tokens=1000 -> threshold 800. PREFIX + TAIL = 80 tokens, so with the initial
# summary estimate of 500 the window budget is 220 tokens.
MAX = 1000
PREFIX = (Message("system", "P" * 160),)
TAIL = (Message("user", "U" * 160),)


def text(tag: str, tokens: int) -> str:
    """A content of exactly `tokens` estimated tokens, starting with `tag`."""
    return tag.ljust(tokens * 4, ".")


def user(tag: str, tokens: int = 100) -> Message:
    return Message("user", text(tag, tokens))


def assistant(tag: str, tokens: int = 100, *call_ids: str) -> Message:
    calls = tuple(ToolCall(id=cid, name="lookup", input={}) for cid in call_ids)
    return Message("assistant", text(tag, tokens), tool_calls=calls)


def tool(call_id: str, tokens: int = 100) -> Message:
    return Message("tool", text(call_id, tokens), tool_call_id=call_id)


class RecordingSummarizer:
    """Returns a fixed summary and records what it was asked to summarise."""

    def __init__(self, summary: str = "S") -> None:
        self.summary = summary
        self.calls: list[list[Message]] = []

    async def __call__(self, older: Sequence[Message]) -> str:
        self.calls.append(list(older))
        return self.summary


def summary_message(summary: str) -> Message:
    return Message("system", "Summary of the earlier conversation:\n" + summary)


TEN = tuple(user(f"m{i}") if i % 2 == 0 else assistant(f"m{i}") for i in range(10))


# --- estimates and digests --------------------------------------------------------------


def test_tokens_are_estimated_as_a_quarter_of_the_length_rounded_up_per_message() -> None:
    assert estimate_tokens([Message("user", "abcde"), Message("user", "abcd")]) == 3
    assert estimate_tokens([Message("user", "")]) == 0


def test_tool_calls_count_with_their_json_text() -> None:
    call = ToolCall(id="c1", name="lookup", input={"q": "x"})
    message = Message("assistant", "abcd", tool_calls=(call,))
    json_length = len(dumps_compact([call.to_json()]))
    assert estimate_tokens([message]) == -(-(4 + json_length) // 4)


def test_the_digest_is_stable_and_changes_with_any_part_of_a_message() -> None:
    base = [assistant("a", 1, "c1"), tool("c1", 1)]
    assert history_digest(base) == history_digest(list(base))
    assert len(history_digest(base)) == 64
    variants = [
        [assistant("b", 1, "c1"), tool("c1", 1)],
        [assistant("a", 1, "c2"), tool("c1", 1)],
        [assistant("a", 1, "c1"), Message("tool", base[1].content, tool_call_id="c9")],
        [assistant("a", 1, "c1"), Message("user", base[1].content)],
        base[:1],
    ]
    assert len({history_digest(v) for v in variants} | {history_digest(base)}) == 6


# --- below the threshold ----------------------------------------------------------------


async def test_below_the_threshold_everything_is_kept_and_nothing_is_summarised() -> None:
    summarizer = RecordingSummarizer()
    history = TEN[:7]  # 700 + 80 = 780 < 800
    messages, cache = await compress_context(
        PREFIX, history, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert messages == [*PREFIX, *history, *TAIL]
    assert cache is None
    assert summarizer.calls == []


async def test_a_stale_cache_is_ignored_below_the_threshold() -> None:
    summarizer = RecordingSummarizer()
    stale = CompressionCache(covered=3, digest="x", summary="old")
    messages, cache = await compress_context(
        PREFIX, TEN[:2], TAIL, max_context_tokens=MAX, cache=stale, summarize=summarizer
    )
    assert messages == [*PREFIX, *TEN[:2], *TAIL]
    assert cache is None


# --- above the threshold ----------------------------------------------------------------


async def test_above_the_threshold_the_older_part_becomes_one_summary_after_the_prefix() -> None:
    summarizer = RecordingSummarizer("the gist")
    messages, cache = await compress_context(
        PREFIX, TEN, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    # Budget 220 holds the last two messages.
    assert messages == [*PREFIX, summary_message("the gist"), *TEN[8:], *TAIL]
    assert summarizer.calls == [list(TEN[:8])]
    assert cache == CompressionCache(covered=8, digest=history_digest(TEN[:8]), summary="the gist")


async def test_at_exactly_the_threshold_compression_happens() -> None:
    summarizer = RecordingSummarizer()
    history = (*TEN[:7], user("x", 20))  # 720 + 80 = 800
    messages, cache = await compress_context(
        PREFIX, history, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert len(summarizer.calls) == 1
    assert cache is not None
    assert messages[1] == summary_message("S")


async def test_the_current_turn_is_kept_whole_even_when_it_is_large() -> None:
    tail = (user("now", 150), assistant("call", 50, "c1"), tool("c1", 100))
    summarizer = RecordingSummarizer()
    messages, _ = await compress_context(
        PREFIX, TEN, tail, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert messages[-3:] == list(tail)
    assert messages[:2] == [*PREFIX, summary_message("S")]


async def test_a_long_real_summary_shrinks_the_window_without_a_second_summary() -> None:
    summarizer = RecordingSummarizer("L" * 2400)  # 600 tokens: budget 120 holds one message
    messages, cache = await compress_context(
        PREFIX, TEN, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert messages == [*PREFIX, summary_message("L" * 2400), TEN[9], *TAIL]
    assert len(summarizer.calls) == 1
    assert cache is not None and cache.covered == 8


async def test_when_nothing_fits_the_whole_history_is_summarised() -> None:
    summarizer = RecordingSummarizer()
    history = (user("a", 300), assistant("b", 300), user("c", 300))
    messages, cache = await compress_context(
        PREFIX, history, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert messages == [*PREFIX, summary_message("S"), *TAIL]
    assert summarizer.calls == [list(history)]
    assert cache is not None and cache.covered == 3


# --- window boundaries ------------------------------------------------------------------


async def test_the_window_moves_back_to_keep_a_tool_group_whole() -> None:
    history = (
        user("u0"),
        assistant("a0"),
        user("u1"),
        assistant("calls", 300, "c1", "c2"),
        tool("c1"),
        tool("c2"),
    )
    summarizer = RecordingSummarizer()
    messages, cache = await compress_context(
        PREFIX, history, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    # The budget of 220 would start the window on tool c1; it starts on its assistant instead.
    assert messages == [*PREFIX, summary_message("S"), *history[3:], *TAIL]
    assert summarizer.calls == [list(history[:3])]
    assert cache is not None and cache.covered == 3


async def test_orphan_tool_messages_are_left_to_the_summary() -> None:
    history = (
        user("u0"),
        assistant("a0"),
        user("u1"),
        assistant("plain", 300),
        tool("gone"),
        user("u2", 60),
        assistant("a2", 60),
    )
    summarizer = RecordingSummarizer()
    messages, _ = await compress_context(
        PREFIX, history, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert messages == [*PREFIX, summary_message("S"), *history[5:], *TAIL]
    assert summarizer.calls == [list(history[:5])]


async def test_tool_messages_answering_another_call_are_orphans() -> None:
    history = (
        user("u0", 300),
        assistant("calls", 300, "c9"),
        tool("c1"),
        user("u2", 60),
        assistant("a2", 60),
    )
    summarizer = RecordingSummarizer()
    messages, _ = await compress_context(
        PREFIX, history, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert messages == [*PREFIX, summary_message("S"), *history[3:], *TAIL]


async def test_the_window_never_starts_on_a_tool_message() -> None:
    history = (
        user("u0"),
        assistant("calls", 40, "c1"),
        tool("c1", 40),
        tool("c1b", 40),
        assistant("calls", 40, "c2"),
        tool("c2", 90),
        user("u1", 90),
        assistant("a1", 90),
        user("u2", 90),
        assistant("calls", 40, "c3"),
        tool("c3", 90),
    )
    compressed = 0
    for size in range(0, 500, 7):
        messages, _ = await compress_context(
            PREFIX,
            history,
            TAIL,
            max_context_tokens=1000 + size,
            cache=None,
            summarize=RecordingSummarizer(),
        )
        if messages[1].role == "system":  # compressed: summary, then the window or the tail
            compressed += 1
            assert messages[2].role != "tool"
    assert compressed > 10


async def test_when_the_tool_group_reaches_the_start_there_is_nothing_to_compress() -> None:
    history = (assistant("calls", 600, "c1"), tool("c1"), tool("c1"))
    summarizer = RecordingSummarizer()
    messages, cache = await compress_context(
        PREFIX, history, TAIL, max_context_tokens=MAX, cache=None, summarize=summarizer
    )
    assert messages == [*PREFIX, *history, *TAIL]
    assert cache is None
    assert summarizer.calls == []


# --- cache ------------------------------------------------------------------------------


async def test_a_matching_cache_is_reused_without_summarising() -> None:
    first, cache = await compress_context(
        PREFIX,
        TEN,
        TAIL,
        max_context_tokens=MAX,
        cache=None,
        summarize=RecordingSummarizer("cached"),
    )
    summarizer = RecordingSummarizer("fresh")
    again, new_cache = await compress_context(
        PREFIX, TEN, TAIL, max_context_tokens=MAX, cache=cache, summarize=summarizer
    )
    assert summarizer.calls == []
    assert new_cache is None
    assert again == first


async def test_the_cached_boundary_is_kept_while_the_window_still_fits() -> None:
    cache = CompressionCache(covered=8, digest=history_digest(TEN[:8]), summary="cached")
    grown = (*TEN, user("n0", 10), assistant("n1", 10))
    summarizer = RecordingSummarizer()
    messages, new_cache = await compress_context(
        PREFIX, grown, TAIL, max_context_tokens=MAX, cache=cache, summarize=summarizer
    )
    assert summarizer.calls == []
    assert new_cache is None
    assert messages == [*PREFIX, summary_message("cached"), *grown[8:], *TAIL]


async def test_a_cache_whose_digest_does_not_match_is_summarised_again() -> None:
    cache = CompressionCache(covered=8, digest=history_digest(TEN[:7]), summary="stale")
    summarizer = RecordingSummarizer("fresh")
    messages, new_cache = await compress_context(
        PREFIX, TEN, TAIL, max_context_tokens=MAX, cache=cache, summarize=summarizer
    )
    assert summarizer.calls == [list(TEN[:8])]
    assert new_cache == CompressionCache(8, history_digest(TEN[:8]), "fresh")
    assert messages[1] == summary_message("fresh")


async def test_an_edited_history_invalidates_the_cache() -> None:
    cache = CompressionCache(covered=8, digest=history_digest(TEN[:8]), summary="stale")
    edited = (user("changed"), *TEN[1:])
    summarizer = RecordingSummarizer("fresh")
    _, new_cache = await compress_context(
        PREFIX, edited, TAIL, max_context_tokens=MAX, cache=cache, summarize=summarizer
    )
    assert summarizer.calls == [list(edited[:8])]
    assert new_cache is not None and new_cache.summary == "fresh"


async def test_a_cache_covering_too_little_is_summarised_again_once() -> None:
    cache = CompressionCache(covered=2, digest=history_digest(TEN[:2]), summary="short")
    summarizer = RecordingSummarizer("fresh")
    messages, new_cache = await compress_context(
        PREFIX, TEN, TAIL, max_context_tokens=MAX, cache=cache, summarize=summarizer
    )
    # A 2-message boundary would leave 800 tokens of window: the window must move forward.
    assert len(summarizer.calls) == 1
    assert new_cache is not None and new_cache.covered > 2
    assert messages[1] == summary_message("fresh")


async def test_a_cache_covering_more_than_the_history_is_summarised_again() -> None:
    cache = CompressionCache(covered=11, digest=history_digest(TEN), summary="future")
    summarizer = RecordingSummarizer("fresh")
    _, new_cache = await compress_context(
        PREFIX, TEN, TAIL, max_context_tokens=MAX, cache=cache, summarize=summarizer
    )
    assert summarizer.calls == [list(TEN[:8])]
    assert new_cache == CompressionCache(8, history_digest(TEN[:8]), "fresh")


async def test_a_long_cached_summary_sizes_the_window() -> None:
    long_summary = "L" * 2400  # 600 tokens: budget 120 holds one message
    cache = CompressionCache(covered=9, digest=history_digest(TEN[:9]), summary=long_summary)
    summarizer = RecordingSummarizer()
    messages, new_cache = await compress_context(
        PREFIX, TEN, TAIL, max_context_tokens=MAX, cache=cache, summarize=summarizer
    )
    assert summarizer.calls == []
    assert new_cache is None
    assert messages == [*PREFIX, summary_message(long_summary), TEN[9], *TAIL]


# --- the default summariser -------------------------------------------------------------


class RecordingLLM:
    provider = "fake"
    model = "fake-model"
    max_context_tokens = 8000

    def __init__(self, content: str | None) -> None:
        self.content = content
        self.calls: list[tuple[list[Message], tuple[ToolSpec, ...]]] = []

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        self.calls.append((list(messages), tuple(tools)))
        return LLMResponse(content=self.content)

    async def aclose(self) -> None:
        return None


def test_compression_sends_the_prompt_then_the_transcript() -> None:
    older = [
        Message("user", "hi"),
        assistant("", 0, "c1"),
        Message("tool", "42", tool_call_id="c1"),
    ]
    assert compression_messages("K", older) == [
        Message("system", "K"),
        Message("user", "Conversation:\nuser: hi\nassistant: \ntool: 42"),
    ]


async def test_the_default_summariser_calls_the_llm_without_tools_and_cleans_it() -> None:
    llm = RecordingLLM("<think>\nthinking\n</think>\n\nShort summary.  ")
    older = [Message("user", "hi")]
    assert await summarize(llm, "K", older) == "Short summary."
    assert llm.calls == [(compression_messages("K", older), ())]
    assert await summarize(RecordingLLM(None), "K", older) == ""

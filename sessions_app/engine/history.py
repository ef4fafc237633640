"""History hygiene: keep only complete tool-call groups (upstream fix 4091bf5).

A turn that failed between tool rounds leaves an assistant message with tool calls but without
(all of) its results; providers reject such a history. This runs at fork `inherit` and at every
prompt assembly. Nothing is deleted from storage.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .compression import estimate_tokens
from .ports import SpaceStore
from .types import LockedRead, Message, Prefetched, SaveResult, TurnContext


def drop_incomplete_tool_groups(messages: Sequence[Message]) -> list[Message]:
    """The messages without incomplete tool-call groups and without orphan tool messages.

    A group is an assistant message with tool calls followed by its `tool` messages; it is kept
    only when every call has its result right after it. Tool messages that answer no call of
    the preceding assistant message are dropped.
    """
    kept: list[Message] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        if message.role == "tool":
            i += 1  # an orphan: no assistant tool-call message right before it
            continue
        if message.role != "assistant" or not message.tool_calls:
            kept.append(message)
            i += 1
            continue
        end = i + 1
        while end < len(messages) and messages[end].role == "tool":
            end += 1
        call_ids = {call.id for call in message.tool_calls}
        results = [m for m in messages[i + 1 : end] if m.tool_call_id in call_ids]
        if call_ids <= {m.tool_call_id for m in results}:
            kept.append(message)
            kept.extend(results)
        i = end
    return kept


class History:
    """A session's stored history as the engine keeps it between turns: the records in order,
    their clean form (`drop_incomplete_tool_groups`) and its token estimate, all kept up to date
    as messages are appended, so a turn's cost does not grow with the length of the history.

    Cleaning is local to the stretches between user messages (a tool-call group never spans a
    user message), so everything before the last user message is cleaned and counted once:
    only the open stretch from the last user message on is cleaned again when the prompt is built.
    """

    __slots__ = ("_settled", "_settled_tokens", "_open", "count")

    def __init__(self, messages: Sequence[Message] = ()) -> None:
        self._settled: list[Message] = []
        self._settled_tokens = 0
        self._open: list[Message] = []
        self.count = 0
        self.extend(messages)

    def extend(self, messages: Sequence[Message]) -> None:
        self._open.extend(messages)
        self.count += len(messages)
        last_user = max((i for i, m in enumerate(self._open) if m.role == "user"), default=0)
        if last_user:
            settled = drop_incomplete_tool_groups(self._open[:last_user])
            self._settled.extend(settled)
            self._settled_tokens += estimate_tokens(settled)
            del self._open[:last_user]

    def split_open(self) -> tuple[History, list[Message]]:
        """The history before its open stretch (from the last user message on: the latest
        turn's own messages), and that stretch."""
        before = History()
        before._settled, before._settled_tokens = list(self._settled), self._settled_tokens
        before.count = self.count - len(self._open)
        return before, list(self._open)

    def clean(self) -> tuple[list[Message], int]:
        """The messages a prompt may contain (complete tool groups only) and their estimate."""
        tail = drop_incomplete_tool_groups(self._open)
        return [*self._settled, *tail], self._settled_tokens + estimate_tokens(tail)


@dataclass(slots=True)
class _Kept:
    history: History
    record_count: int
    last_record_id: int


class HistoryCache:
    """The histories of one space's recently used sessions, so that a turn reads from the store
    only the records it does not hold yet (normally none: it saved them itself).

    The store stays the truth. Every load asks for the records after the newest one kept and
    checks the session's record count: when kept + new != the count (written elsewhere in a way
    that is not a plain append, or a save whose outcome was unknown), the whole history is read
    again. Used under the session's lock only, so one operation at a time touches an entry.
    """

    def __init__(self, max_sessions: int = 128) -> None:
        self._max_sessions = max_sessions
        self._kept: OrderedDict[str, _Kept] = OrderedDict()

    def _after(self, session_id: str) -> int:
        """The record id the next load reads after (0: the whole history)."""
        kept = self._kept.get(session_id)
        return kept.last_record_id if kept is not None else 0

    def first_read(self, store: SpaceStore, session_id: str
                   ) -> Callable[[], LockedRead | None]:
        """For `SessionLocks.hold(first_read=...)`: the read `load` makes first, asked for
        once the session is held (so after what the previous holder kept)."""
        return lambda: store.turn_context_read(session_id,
                                               history_after=self._after(session_id))

    async def load(self, store: SpaceStore, session_id: str,
                   prefetched: Prefetched | None = None) -> tuple[TurnContext, History]:
        """The session's turn context (its `history` may hold only the new records) and its
        whole history. `prefetched`: the session lock's result of `first_read`, used for the
        first read when it is the one this load would make."""
        kept = self._kept.get(session_id)
        after = self._after(session_id)
        ctx = prefetched.value() if prefetched is not None else None
        if ctx is not None and ctx.history_after != after:
            ctx = None  # read for another position (cannot happen under the session's lock)
        if kept is not None and kept.last_record_id:
            if ctx is None:
                ctx = await store.load_turn_context(session_id, history_after=after)
            if ctx.record_count == kept.record_count + len(ctx.history):
                kept.history.extend(ctx.history)
                kept.record_count, kept.last_record_id = ctx.record_count, ctx.last_record_id
                self._kept.move_to_end(session_id)
                return ctx, kept.history
            ctx = None  # not a plain append of what is kept: read the whole history
        if ctx is None:
            ctx = await store.load_turn_context(session_id)
        history = History(ctx.history)
        self._kept[session_id] = _Kept(history, ctx.record_count, ctx.last_record_id)
        self._kept.move_to_end(session_id)
        while len(self._kept) > self._max_sessions:
            self._kept.popitem(last=False)
        return ctx, history

    def forget(self, session_id: str) -> None:
        """The session's history was rewritten (not appended to): read it whole next time."""
        self._kept.pop(session_id, None)

    def saved(self, session_id: str, messages: Sequence[Message], result: SaveResult) -> None:
        """`messages` were appended by one committed save_call."""
        kept = self._kept.get(session_id)
        if kept is None:
            return
        if result.record_count != kept.record_count + len(messages) or _has_nul(messages):
            # Not a plain append of these very messages (or the store altered them: NUL is
            # stored replaced): read the truth next time.
            del self._kept[session_id]
            return
        kept.history.extend(messages)
        kept.record_count, kept.last_record_id = result.record_count, result.last_record_id


def _has_nul(messages: Sequence[Message]) -> bool:
    return any(_nul_in((m.content, m.tool_call_id, [c.to_json() for c in m.tool_calls]))
               for m in messages)


def _nul_in(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_nul_in(k) or _nul_in(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_nul_in(v) for v in value)
    return False

"""Editing a conversation: re-run the last turn with a new or the same user message, delete a
message, and the history a branch from a message starts with.

The rules (docs/conversations.md tells clients):

- Each operation holds the session's lock from its first read to its last write, so it never
  interleaves with a turn, a fork or another edit on that session; a running turn makes it wait
  (up to the lock timeout, then 409 SESSION_BUSY). An archived session refuses them (409).
- Re-running (edit, regenerate) replaces the LAST turn: its user message and everything after
  it. The new turn runs on the history before it; the old turn is removed only once its first
  call has answered, so a model failure on that call leaves the session exactly as it was.
  `turnCount` loses the replaced turn if it had completed (a final reply) and gains the new one.
- Deleting removes one message, or the whole tool-call group it belongs to (an assistant
  message with tool calls and their results); later messages stay; `turnCount` is unchanged.
- L2 memory is not rewritten by either: what it learned from a removed message stays until a
  later consolidation replaces it; new messages are newer than its marker, so they are read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import Conflict, InvalidInput, NotFound, SessionArchived, SessionBusy
from .history import History
from .types import Message, SaveResult, TurnContext, TurnResult, TurnWrite
from .usage import CallUsage

if TYPE_CHECKING:
    from .agent import SpaceAgent
    from .ports import SpaceStore


class MessageNotFound(NotFound):
    code = "MESSAGE_NOT_FOUND"
    default_message = "Message not found"


class MessageNotEditable(Conflict):
    code = "MESSAGE_NOT_EDITABLE"
    default_message = "Only the session's last user message can be edited"


class NothingToRegenerate(Conflict):
    code = "NOTHING_TO_REGENERATE"
    default_message = "The session has no turn to run again"


def tool_group(stretch: Sequence[tuple[int, Message]], record_id: int) -> list[int]:
    """The record ids deleting `record_id` removes: its tool-call group whole (the assistant
    message that made the calls and the results right after it), else the record alone."""
    ids = [rid for rid, _ in stretch]
    at = ids.index(record_id)
    start = at
    if stretch[at][1].role == "tool":  # find the assistant message that made the call
        while start > 0 and stretch[start - 1][1].role == "tool":
            start -= 1
        start -= 1
    head = stretch[start][1] if start >= 0 else None
    if head is None or head.role != "assistant" or not head.tool_calls:
        return [record_id]
    end = start + 1
    while end < len(stretch) and stretch[end][1].role == "tool":
        end += 1
    return ids[start:end]


async def history_up_to(store: SpaceStore, session_id: str, record_id: int) -> TurnContext:
    """The source of a branch: the session's context with the history up to and including
    `record_id` (and the rest of its tool-call group). InvalidInput when the session has no
    such record (another session's or space's message included)."""
    pairs = await store.history_through(session_id, record_id)
    ids = [rid for rid, _ in pairs]
    if record_id not in ids:
        raise InvalidInput("fromMessage is not a message of this session")
    at = ids.index(record_id)
    group = tool_group(pairs, record_id)
    end = max(at, ids.index(group[-1])) + 1
    ctx = await store.load_turn_context(session_id, history_after=None)
    return dataclasses.replace(ctx, history=tuple(m for _, m in pairs[:end]), history_after=0)


class _RewritingStore:
    """The store as the re-run turn sees it: its first save_call also removes the old turn."""

    def __init__(self, store: SpaceStore, remove: list[int], turns_removed: int) -> None:
        self._store = store
        self._remove: list[int] | None = remove
        self._turns_removed = turns_removed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def save_call(
        self, session_id: str, messages: Sequence[Message], *,
        consumed_insight: str | None = None, end_turn: bool = False,
        usage: Sequence[CallUsage] = (),
        turn: TurnWrite | None = None,
    ) -> SaveResult:
        if self._remove is not None:
            # The old turn goes first; then the new call is saved like any turn's (its turn row,
            # its events, its usage). Two transactions: if the second fails, the old turn is
            # gone and the new one was not kept (the client asked for it to be replaced).
            remove, self._remove = self._remove, None
            await self._store.rewrite_records(session_id, remove,
                                              turns_removed=self._turns_removed)
        return await self._store.save_call(
            session_id, messages, consumed_insight=consumed_insight, end_turn=end_turn,
            usage=usage, turn=turn)


async def rerun_last_turn(
    agent: SpaceAgent, session_id: str, *, text: str | None = None,
    message_id: int | None = None,
) -> TurnResult:
    """Run the session's last turn again: with `text` as its user message (an edit of
    `message_id`, which must be that message), or with the same message (regenerate)."""
    async with agent.locks.hold(session_id):
        stretch = await agent.store.record_stretch(session_id)
        meta = await agent.store.get_session(session_id)
        if meta.status == "archived":
            raise SessionArchived(session_id)
        if message_id is not None:
            if not stretch or stretch[0][0] != message_id or stretch[0][1].role != "user":
                owned = await agent.store.record_stretch(session_id, message_id)
                if not owned:
                    raise MessageNotFound()
                raise MessageNotEditable()
        elif not stretch or stretch[0][1].role != "user":
            raise NothingToRegenerate()
        old = [m for _, m in stretch]
        completed = any(m.role == "assistant" and not m.tool_calls for m in old)
        agent._histories.forget(session_id)
        ctx = await agent.store.load_turn_context(session_id)
        if ctx.waiting_turns:  # its messages are the waiting turn's own
            raise SessionBusy("session busy: a turn waits for the approval of its tool calls")
        kept = ctx.history[: len(ctx.history) - len(stretch)]
        ctx = dataclasses.replace(ctx, history=kept)
        store = _RewritingStore(agent.store, [rid for rid, _ in stretch], int(completed))
        usage = agent._usage_scope(session_id)
        loop = agent._turn_loop(ctx, History(kept), text if text is not None else old[0].content,
                                usage, store=store)  # type: ignore[arg-type]
        try:
            result = await loop.run()
        except BaseException:
            await usage.flush(agent.store, quietly=True)  # calls made before the failure
            raise
        finally:
            agent._histories.forget(session_id)
    await agent._after_turn(ctx, loop.turn_count)
    return result


async def delete_message(agent: SpaceAgent, session_id: str, record_id: int) -> list[int]:
    """Delete a message (with its whole tool-call group); the ids deleted."""
    async with agent.locks.hold(session_id):
        meta = await agent.store.get_session(session_id)
        if meta.status == "archived":
            raise SessionArchived(session_id)
        stretch = await agent.store.record_stretch(session_id, record_id)
        if not stretch:
            raise MessageNotFound()
        ids = tool_group(stretch, record_id)
        await agent.store.rewrite_records(session_id, ids)
        agent._histories.forget(session_id)
    return ids

"""History hygiene: keep only complete tool-call groups (upstream fix 4091bf5).

A turn that failed between tool rounds leaves an assistant message with tool calls but without
(all of) its results; providers reject such a history. This runs at fork `inherit` and at every
prompt assembly. Nothing is deleted from storage.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Message


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

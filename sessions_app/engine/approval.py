"""Human approval of tool calls: which calls need it, the wait, and what a denial tells the LLM.

A space's `config.approveTools` (or a session's own) names the tools whose calls a human must
approve (`"*"`: every tool). When the LLM calls one, the turn saves its round as usual, then
pauses: the store marks the turn `waiting` with one pending approval per such call, and the
turn's clients get `tool.approval_required`. The wait holds no database connection and no
thread: the turn reads the approvals, then sleeps until a wake-up (an answer arrived, in this
or another process) or a poll interval, and again, until every call is decided or the
deadline passes (the undecided ones are then denied). The session's lock stays with the turn,
so the busy policy applies to new turns meanwhile.

Approved calls run with the round's other calls; a denied call is not run, and its result (the
tool message the LLM sees) says it was denied and why. Everything the turn needs to go on is
stored (its records, its turn row, the approvals), so when the process stops during the wait
any process resumes the turn once the answers are in (`SpaceAgent.resume_waiting`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import InvalidInput, required_text, wrong_type
from .ports import ApprovalWakeups, SpaceStore
from .tools import ToolResult
from .types import Approval, ToolCall

ALL_TOOLS = "*"
MAX_REASON_CHARS = 2000
MAX_STORED_ID_BYTES = 1000  # longer call ids are kept as their digest (stored_id)
TIMED_OUT = "no answer before the approval deadline"
NO_ANSWER = "no answer was recorded for it"
POLL_SECONDS = 5.0  # a lost wake-up costs at most this much delay


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """Which tools of a turn need a human's approval, and how long one may take."""

    tools: Collection[str] = ()
    timeout_seconds: float = 600.0

    def gated(self, calls: Sequence[ToolCall]) -> list[ToolCall]:
        if not self.tools:
            return []
        every = ALL_TOOLS in self.tools
        return [call for call in calls if every or call.name in self.tools]

    def deadline(self) -> datetime:
        return now() + timedelta(seconds=self.timeout_seconds)


@dataclass(frozen=True, slots=True)
class Answer:
    """One decision as a client sends it (REST body, WebSocket frame)."""

    call_id: str
    approve: bool
    reason: str | None = None

    @classmethod
    def parse(cls, data: object) -> Answer:
        """`{callId, approve, reason?}`; InvalidInput naming the field otherwise."""
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object")
        call_id = required_text(data, "callId")
        approve = data.get("approve")
        if approve is None:
            raise InvalidInput("approve is required")
        if not isinstance(approve, bool):
            raise wrong_type("approve", "a boolean")
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise wrong_type("reason", "a string or null")
        if reason is not None and len(reason) > MAX_REASON_CHARS:
            raise InvalidInput(f"reason must be at most {MAX_REASON_CHARS} characters")
        return cls(stored_id(call_id), approve, reason or None)


def stored_id(call_id: str) -> str:
    """A call id as the store keeps it and answers name it: NUL cannot be stored (it becomes
    U+FFFD), and an id longer than MAX_STORED_ID_BYTES becomes its SHA-256 digest (the model
    chooses ids; a PostgreSQL index entry holds about 2.7 KB). Applying it twice changes
    nothing, so an answer may give the model's id or the stored one."""
    kept = call_id.replace("\x00", "\ufffd")
    data = kept.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_STORED_ID_BYTES:
        return kept
    return "sha256:" + hashlib.sha256(data).hexdigest()


def denied_result(call: ToolCall, approval: Approval | None) -> ToolResult:
    """The tool message of a call that was not approved: not run, and why."""
    reason = NO_ANSWER if approval is None else approval.reason or "no reason given"
    return ToolResult(call.id, call.name, False,
                      error=f"Not run: the user denied this tool call ({reason}).")


async def decisions(store: SpaceStore, wakeups: ApprovalWakeups, session_id: str,
                    turn_id: str, *, poll_seconds: float = POLL_SECONDS) -> list[Approval]:
    """Wait until every approval of the turn is decided; past the deadline the pending ones
    are denied. One read per wake-up, nothing held in between."""
    with wakeups.watch(turn_id) as woken:
        while True:
            approvals = await store.list_approvals(session_id, turn_id)
            pending = [a for a in approvals if a.decision is None]
            if not pending:
                return approvals
            left = (min(a.deadline for a in pending) - now()).total_seconds()
            if left <= 0:
                await store.expire_approvals(session_id, turn_id, TIMED_OUT)
                continue
            await woken(min(left, poll_seconds))

"""Tool approvals on PostgreSQL (`PgSpaceStore` inherits these; engine/approval.py says what
they are for). Each is one statement on the event loop; a decision is recorded once even when
two arrive at the same moment (the update re-checks `decision IS NULL` under its row lock).

Imported by `postgres` once its helpers exist (it needs them to build its SQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from django.utils import timezone

from ..engine.approval import stored_id
from ..engine.errors import ApprovalAnswered, ApprovalNotFound, TurnNotFound, TurnNotWaiting
from ..engine.types import Approval, ToolCall
from .common import parse_uuid, storable
from .postgres import _THIS_SESSION

_APPROVAL = "a.call_id, a.name, a.arguments, a.decision, a.reason, a.deadline, a.created_at, " \
    "a.decided_at"
_THIS_TURN = f"{_THIS_SESSION} AND tu.id = %(turn)s"

SQL_REQUEST_APPROVALS = f"""
WITH trn AS (
  UPDATE turns AS tu SET status = 'waiting', updated_at = %(now)s FROM sessions s
  WHERE s.id = tu.session_id AND {_THIS_TURN} AND tu.status = 'running'
  RETURNING tu.id
)
INSERT INTO tool_approvals (turn_id, call_id, name, arguments, deadline, created_at)
SELECT trn.id, x.call_id, x.name, x.arguments, %(deadline)s, %(now)s
FROM trn CROSS JOIN json_to_recordset(%(calls)s::json)
  AS x(call_id text, name text, arguments jsonb)
ON CONFLICT (turn_id, call_id) DO UPDATE SET name = EXCLUDED.name,
  arguments = EXCLUDED.arguments, decision = NULL, reason = NULL, deadline = EXCLUDED.deadline,
  created_at = EXCLUDED.created_at, decided_at = NULL
RETURNING turn_id
"""
SQL_LIST_APPROVALS = f"""
SELECT tu.status, {_APPROVAL}
FROM sessions s JOIN turns tu ON tu.session_id = s.id
  LEFT JOIN tool_approvals a ON a.turn_id = tu.id
WHERE {_THIS_TURN} ORDER BY a.id
"""
SQL_DECIDE_APPROVAL = f"""
WITH target AS (
  SELECT tu.status, a.id, a.decision
  FROM sessions s JOIN turns tu ON tu.session_id = s.id
    LEFT JOIN tool_approvals a ON a.turn_id = tu.id AND a.call_id = %(call)s
  WHERE {_THIS_TURN}
), upd AS (
  UPDATE tool_approvals AS a SET decision = %(decision)s, reason = %(reason)s,
    decided_at = %(now)s
  FROM target WHERE a.id = target.id AND target.status = 'waiting' AND a.decision IS NULL
  RETURNING {_APPROVAL}
)
SELECT target.status, target.id, upd.* FROM target LEFT JOIN upd ON true
"""
SQL_EXPIRE_APPROVALS = f"""
UPDATE tool_approvals AS a SET decision = 'denied', reason = %(reason)s, decided_at = %(now)s
FROM turns tu, sessions s
WHERE a.turn_id = tu.id AND s.id = tu.session_id AND {_THIS_TURN} AND a.decision IS NULL
RETURNING a.id
"""
SQL_CLAIM_WAITING_TURN = f"""
UPDATE turns AS tu SET status = 'running', updated_at = %(now)s FROM sessions s
WHERE s.id = tu.session_id AND {_THIS_TURN} AND tu.status = 'waiting'
RETURNING tu.id
"""


def approval(call_id: str, name: str, arguments: Any, decision: str | None, reason: str | None,
             deadline: datetime, created_at: datetime, decided_at: datetime | None) -> Approval:
    return Approval(call_id, name, arguments or {}, decision, reason,  # type: ignore[arg-type]
                    deadline, created_at, decided_at)


class PgApprovals:
    """The approvals part of the SpaceStore port (see engine/ports.py)."""

    def _turn_params(self, session_id: str, turn_id: str, **more: Any) -> dict[str, Any]:
        turn = parse_uuid(turn_id)
        params = self._params(session_id, turn=turn, now=timezone.now(), **more)  # type: ignore
        if turn is None:
            raise TurnNotFound()
        return params

    async def _no_turn(self, session_id: str) -> TurnNotFound:
        await self.get_session(session_id)  # type: ignore[attr-defined]  # SessionNotFound first
        return TurnNotFound()

    async def request_approvals(self, session_id: str, turn_id: str,
                                calls: Sequence[ToolCall], deadline: datetime) -> None:
        # One row per call id (an id the LLM used again, in this round or an earlier one of
        # the turn, is asked again).
        rows = list({c.id: {"call_id": stored_id(c.id), "name": storable(c.name),
                            "arguments": c.input} for c in calls}.values())
        await self._one(SQL_REQUEST_APPROVALS, self._turn_params(  # type: ignore[attr-defined]
            session_id, turn_id, deadline=deadline, calls=orjson.dumps(rows).decode()))

    async def list_approvals(self, session_id: str, turn_id: str) -> list[Approval]:
        try:
            params = self._turn_params(session_id, turn_id)
        except TurnNotFound:
            raise await self._no_turn(session_id) from None
        rows = await self._read_all(SQL_LIST_APPROVALS, params)  # type: ignore[attr-defined]
        if not rows:
            raise await self._no_turn(session_id)
        return [approval(*row[1:]) for row in rows if row[1] is not None]

    async def decide_approval(self, session_id: str, turn_id: str, call_id: str, *,
                              approve: bool, reason: str | None) -> Approval:
        try:
            params = self._turn_params(session_id, turn_id, call=call_id, reason=storable(reason),
                                       decision="approved" if approve else "denied")
        except TurnNotFound:
            raise await self._no_turn(session_id) from None
        row = await self._one(SQL_DECIDE_APPROVAL, params)  # type: ignore[attr-defined]
        if row is None:
            raise await self._no_turn(session_id)
        status, found, *decided = row
        if status != "waiting":
            raise TurnNotWaiting(f"Turn {turn_id} is not waiting for an approval ({status})")
        if found is None:
            raise ApprovalNotFound()
        if decided[0] is None:
            raise ApprovalAnswered()
        return approval(*decided)

    async def expire_approvals(self, session_id: str, turn_id: str, reason: str) -> None:
        await self._one(SQL_EXPIRE_APPROVALS,  # type: ignore[attr-defined]
                        self._turn_params(session_id, turn_id, reason=reason))

    async def claim_waiting_turn(self, session_id: str, turn_id: str) -> bool:
        return await self._one(SQL_CLAIM_WAITING_TURN,  # type: ignore[attr-defined]
                               self._turn_params(session_id, turn_id)) is not None

"""Tool approvals with the ORM (`DjangoSpaceStore` inherits these; engine/approval.py says what
they are for). A decision is recorded once: the update re-checks `decision IS NULL`.

Imported by `orm` once its helpers exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..engine.approval import stored_id
from ..engine.errors import ApprovalAnswered, ApprovalNotFound, TurnNotFound, TurnNotWaiting
from ..engine.types import Approval, ToolCall
from ..models import ToolApproval, Turn
from .common import parse_uuid, storable
from .orm import unit_of_work


def _approval(row: ToolApproval) -> Approval:
    return Approval(row.call_id, row.name, row.arguments or {}, row.decision,  # type: ignore
                    row.reason, row.deadline, row.created_at, row.decided_at)


class OrmApprovals:
    """The approvals part of the SpaceStore port (see engine/ports.py)."""

    def _turn(self, session_id: str, turn_id: str) -> Turn:
        pk = self._session_pk(session_id)  # type: ignore[attr-defined]  # SessionNotFound
        turn_pk = parse_uuid(turn_id)
        turn = Turn.objects.filter(session_id=pk, id=turn_pk).first() if turn_pk else None
        if turn is None:
            raise TurnNotFound()
        return turn

    @unit_of_work
    def request_approvals(self, session_id: str, turn_id: str, calls: Sequence[ToolCall],
                          deadline: datetime) -> None:
        turn, now = self._turn(session_id, turn_id), timezone.now()
        with transaction.atomic():
            if not Turn.objects.filter(pk=turn.pk, status=Turn.Status.RUNNING).update(
                    status=Turn.Status.WAITING, updated_at=now):
                return
            for call in {c.id: c for c in calls}.values():  # an id used again is asked again
                ToolApproval.objects.update_or_create(
                    turn_id=turn.pk, call_id=stored_id(call.id), defaults={
                        "name": storable(call.name), "arguments": dict(call.input),
                        "decision": None, "reason": None, "decided_at": None,
                        "deadline": deadline, "created_at": now})

    @unit_of_work
    def list_approvals(self, session_id: str, turn_id: str) -> list[Approval]:
        turn = self._turn(session_id, turn_id)
        return [_approval(a) for a in ToolApproval.objects.filter(turn_id=turn.pk)]

    @unit_of_work
    def decide_approval(self, session_id: str, turn_id: str, call_id: str, *,
                        approve: bool, reason: str | None) -> Approval:
        turn = self._turn(session_id, turn_id)
        if turn.status != Turn.Status.WAITING:
            raise TurnNotWaiting(f"Turn {turn_id} is not waiting for an approval ({turn.status})")
        rows = ToolApproval.objects.filter(turn_id=turn.pk, call_id=call_id)
        if not rows.exists():
            raise ApprovalNotFound()
        decision: dict[str, Any] = {
            "decision": ToolApproval.Decision.APPROVED if approve else ToolApproval.Decision.DENIED,
            "reason": storable(reason), "decided_at": timezone.now()}
        if not rows.filter(decision__isnull=True).update(**decision):
            raise ApprovalAnswered()
        return _approval(rows.get())

    @unit_of_work
    def expire_approvals(self, session_id: str, turn_id: str, reason: str) -> None:
        turn = self._turn(session_id, turn_id)
        ToolApproval.objects.filter(turn_id=turn.pk, decision__isnull=True).update(
            decision=ToolApproval.Decision.DENIED, reason=reason, decided_at=timezone.now())

    @unit_of_work
    def claim_waiting_turn(self, session_id: str, turn_id: str) -> bool:
        turn = self._turn(session_id, turn_id)
        return bool(Turn.objects.filter(pk=turn.pk, status=Turn.Status.WAITING).update(
            status=Turn.Status.RUNNING, updated_at=timezone.now()))

"""Answers to tool approvals, from any server process: the runtime side of engine/approval.py.

- `Wakeups` (one per event loop): a turn that waits for approvals sleeps on it. An answer
  recorded in this process wakes the turn at once; one recorded in another process reaches it
  through the channel layer (live.py's turn-signal listener, which also carries cancels); the
  engine's poll interval covers a message that got lost.
- `answer`: record one decision (REST `POST .../turns/{turnId}/approvals`, the WebSocket's
  `tool.approve`) and wake the turn wherever it waits. When no process holds the turn any more
  (its process stopped during the wait), this process goes on with it, in the background.
- `run_periodically`: every serving process looks, every STELLO_APPROVAL_SWEEP_SECONDS, for
  waiting turns that nobody holds whose answers are all in or whose deadline has passed (the
  process stopped and nobody answered), and goes on with them.
- `stop_waiting`: at shutdown the turns that wait here stop waiting (`TurnSuspended`); they
  stay `waiting` in the database, so the process is not held up by a human.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from spaces import pgpool

from . import live
from .engine.agent import SpaceAgent
from .engine.errors import ServiceUnavailable, TurnSuspended
from .engine.types import Approval

logger = logging.getLogger("stello.approvals")


class Wakeups:
    """The turns of one event loop that wait for approvals (the engine's ApprovalWakeups)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._stopped = False

    @contextlib.contextmanager
    def watch(self, turn_id: str) -> Iterator[Callable[[float], Awaitable[None]]]:
        """While the block runs, answers for `turn_id` are noticed (even between waits); it
        gets `woken(seconds)`, which returns at the next answer or after `seconds`."""
        if self._stopped:
            raise TurnSuspended()
        live.listen_for_turn_signals()  # answers recorded by other processes
        answered = asyncio.Event()
        self._waiting.setdefault(turn_id, set()).add(answered)

        async def woken(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await answered.wait()
            answered.clear()
            if self._stopped:
                raise TurnSuspended()

        try:
            yield woken
        finally:
            watching = self._waiting.get(turn_id)
            if watching is not None:
                watching.discard(answered)
                if not watching:
                    del self._waiting[turn_id]

    def wake(self, turn_id: str) -> None:
        for woken in self._waiting.get(turn_id, ()):
            woken.set()

    def waits_here(self, turn_id: str) -> bool:
        return turn_id in self._waiting

    def stop(self) -> None:
        """Shutdown: every wait ends with TurnSuspended, and no new one starts."""
        self._stopped = True
        for turn_id in list(self._waiting):
            self.wake(turn_id)


_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wakeups] = (
    weakref.WeakKeyDictionary())


def wakeups() -> Wakeups:
    """The running loop's Wakeups."""
    loop = asyncio.get_running_loop()
    found = _wakeups.get(loop)
    if found is None:
        found = _wakeups[loop] = Wakeups()
    return found


def stop_waiting() -> None:
    """Shutdown of this loop's runtime: its waiting turns stop waiting; a runtime built
    afterwards on the same loop (tests) gets a fresh Wakeups."""
    found = _wakeups.pop(asyncio.get_running_loop(), None)
    if found is not None:
        found.stop()


async def answer(agent: SpaceAgent, session_id: str, turn_id: str, call_id: str, *,
                 approve: bool, reason: str | None,
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any]) -> Approval:
    """Record one decision and wake the turn wherever it waits; `spawn` runs the turn on in
    the background here when its process stopped (see the module doc)."""
    decided = await agent.store.decide_approval(session_id, turn_id, call_id, approve=approve,
                                                reason=reason)
    here = wakeups()
    if here.waits_here(turn_id):
        here.wake(turn_id)
        return decided
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(live.TURN_SIGNALS, {"type": live.ANSWERED, "turnId": turn_id})
    # A live process holds the session while its turn waits, so this does nothing there;
    # with the holder gone, this process goes on with the turn once it is answered.
    spawn(agent.resume_waiting(session_id, turn_id))
    return decided


# -- waiting turns that no process holds -------------------------------------------------------

SQL_DUE = """
SELECT s.space_id, tu.session_id, tu.id FROM turns tu JOIN sessions s ON s.id = tu.session_id
WHERE tu.status = 'waiting' AND NOT EXISTS (
  SELECT 1 FROM tool_approvals a
  WHERE a.turn_id = tu.id AND a.decision IS NULL AND a.deadline > now())
LIMIT 100
"""


async def due_turns() -> list[tuple[str, str, str]]:
    """Waiting turns whose answers are all in or whose deadline passed: (space, session,
    turn). Those a live process holds are among them until that process goes on."""
    if pgpool.enabled():
        rows = await pgpool.fetchall(SQL_DUE)
    else:
        rows = await sync_to_async(_due_turns_orm)()
    return [(str(space), str(session), str(turn)) for space, session, turn in rows]


def _due_turns_orm() -> list[tuple[Any, Any, Any]]:
    from .models import ToolApproval, Turn

    pending = ToolApproval.objects.filter(turn_id=OuterRef("pk"), decision__isnull=True,
                                          deadline__gt=timezone.now())
    return list(Turn.objects.filter(Q(status=Turn.Status.WAITING), ~Exists(pending))
                .values_list("session__space_id", "session_id", "id")[:100])


async def resume_due(agent_for: Callable[[str], Awaitable[SpaceAgent]]) -> int:
    """Go on with every due turn nobody holds; how many went on."""
    resumed = 0
    for space_id, session_id, turn_id in await due_turns():
        if wakeups().waits_here(turn_id):
            continue
        try:
            agent = await agent_for(space_id)
            if await agent.resume_waiting(session_id, turn_id) is not None:
                resumed += 1
        except Exception:  # one turn's failure (logged in its row) does not stop the others
            logger.warning("could not resume waiting turn %s", turn_id, exc_info=True)
    return resumed


async def run_periodically(agent_for: Callable[[str], Awaitable[SpaceAgent]]) -> None:
    every = settings.STELLO["APPROVAL_SWEEP_SECONDS"]
    while True:
        await asyncio.sleep(every)
        try:
            await resume_due(agent_for)
        except (pgpool.DatabaseUnavailable, ServiceUnavailable) as exc:  # try again next time
            logger.warning("the approval sweep found the database unavailable: %s", exc)
        except Exception:
            logger.warning("the approval sweep failed", exc_info=True)

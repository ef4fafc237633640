"""Retention: per-space rules that archive idle sessions and delete long-archived ones.

A space's `RetentionPolicy` has two optional numbers of days:

- `archive_idle_days`: an active child (standard) session whose `last_active_at` is older is
  archived through its space's agent, exactly like `POST .../archive`: under the session's lock
  (a running turn finishes first; a session still busy after the lock timeout is left for the
  next sweep) and with the usual consolidation of its memory.
- `delete_archived_days`: an archived session archived longer ago (its `updated_at`: an
  archived session is read-only, so that is when it was archived) is deleted for real with
  its records, data slots and tree node, but only together with its whole subtree, when every
  descendant is due as well; a due session with a child that is not stays until it is.
  The main session is never archived, so it is never deleted.

`sweep` applies every policy once and logs the counts. It runs from the `sweepretention`
management command, and periodically in every serving process: as a procrastinate periodic
job on PostgreSQL (one run per period across all processes), in process on SQLite.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from spaces import pgpool

from .engine.errors import ServiceUnavailable, SessionBusy, SessionNotFound, SpaceNotFound
from .models import RetentionPolicy, Session

logger = logging.getLogger("stello.retention")

GetAgent = Callable[[str], Awaitable]


@dataclass
class SweepCounts:
    spaces: int = 0
    archived: int = 0
    deleted: int = 0
    busy: int = 0

    def add(self, other: SweepCounts) -> None:
        self.archived += other.archived
        self.deleted += other.deleted
        self.busy += other.busy


def policies() -> list[tuple[str, int | None, int | None]]:
    return [(str(space_id), archive, delete) for space_id, archive, delete in
            RetentionPolicy.objects.filter(Q(archive_idle_days__isnull=False)
                                           | Q(delete_archived_days__isnull=False))
            .values_list("space_id", "archive_idle_days", "delete_archived_days")]


def idle_sessions(space_id: str, cutoff: datetime) -> list[str]:
    return [str(sid) for sid in Session.objects.filter(
        space_id=space_id, role=Session.Role.STANDARD, status=Session.Status.ACTIVE,
        last_active_at__lt=cutoff).values_list("id", flat=True)]


def delete_expired(space_id: str, cutoff: datetime) -> int:
    """Delete the space's archived sessions archived before `cutoff` whose whole subtree is
    due too; how many sessions went."""
    with transaction.atomic():
        rows = list(Session.objects.filter(space_id=space_id).select_for_update(of=("self",))
                    .values_list("id", "node__parent_id", "status", "updated_at"))
        children: dict = {}
        due = set()
        for sid, parent, status, updated in rows:
            children.setdefault(parent, []).append(sid)
            if status == Session.Status.ARCHIVED and updated < cutoff:
                due.add(sid)

        removable: dict = {}

        def whole(sid) -> bool:  # iterative post-order: trees can be deep
            stack = [(sid, False)]
            while stack:
                node, expanded = stack.pop()
                if node in removable:
                    continue
                kids = children.get(node, [])
                if expanded or not kids:
                    removable[node] = node in due and all(removable[k] for k in kids)
                else:
                    stack.append((node, True))
                    stack.extend((k, False) for k in kids if k not in removable)
            return removable[sid]

        for sid in due:
            whole(sid)
        ids = [sid for sid, ok in removable.items() if ok]
        if not ids:
            return 0
        # The status is checked again in the DELETE: an unarchive meanwhile keeps the session.
        deleted, per_model = Session.objects.filter(
            id__in=ids, status=Session.Status.ARCHIVED, updated_at__lt=cutoff).delete()
        return per_model.get(Session._meta.label, 0)


async def sweep_space(get_agent: GetAgent, space_id: str, archive_days: int | None,
                      delete_days: int | None, now: datetime) -> SweepCounts:
    counts = SweepCounts(spaces=1)
    if archive_days is not None:
        idle = await sync_to_async(idle_sessions)(space_id, now - timedelta(days=archive_days))
        if idle:
            agent = await get_agent(space_id)
            for session_id in idle:
                try:
                    await agent.archive(session_id)
                    counts.archived += 1
                except SessionBusy:
                    counts.busy += 1
                except SessionNotFound:
                    pass  # deleted meanwhile
    if delete_days is not None:
        counts.deleted = await sync_to_async(delete_expired)(
            space_id, now - timedelta(days=delete_days))
    return counts


async def sweep(get_agent: GetAgent, *, now: datetime | None = None) -> SweepCounts:
    """Apply every space's policy once; the totals are logged (and returned)."""
    now = now or timezone.now()
    total = SweepCounts()
    for space_id, archive_days, delete_days in await sync_to_async(policies)():
        try:
            counts = await sweep_space(get_agent, space_id, archive_days, delete_days, now)
        except SpaceNotFound:
            continue
        except Exception:  # one space's failure must not stop the others
            logger.exception("retention space=%s: sweep failed", space_id)
            continue
        total.spaces += 1
        total.add(counts)
        if counts.archived or counts.deleted or counts.busy:
            logger.info("retention space=%s: archived=%d deleted=%d busy=%d", space_id,
                        counts.archived, counts.deleted, counts.busy)
    logger.info("retention sweep: spaces=%d archived=%d deleted=%d busy=%d", total.spaces,
                total.archived, total.deleted, total.busy)
    return total


# -- periodic runs ------------------------------------------------------------------------------

def interval_minutes() -> int:
    return int(settings.STELLO["RETENTION_SWEEP_MINUTES"])


async def run_periodically(get_agent: GetAgent) -> None:
    """A sweep every interval while the loop serves (every serving process runs one: sweeps
    are safe side by side, since each archive takes the session's lock and each delete checks
    the status and age again)."""
    minutes = interval_minutes()
    if not minutes:
        return
    while True:
        await asyncio.sleep(minutes * 60)
        try:
            await sweep(get_agent)
        except asyncio.CancelledError:
            raise
        except (pgpool.DatabaseUnavailable, ServiceUnavailable) as exc:  # try again next time
            logger.warning("retention sweep: the database is unavailable: %s", exc)
        except Exception:
            logger.exception("retention sweep failed")

"""Quotas: a turn (REST or WebSocket) whose user, or key, has spent a budget of the current
period is refused before any LLM call, with `QuotaExceeded` (429, `Retry-After` = the seconds
until the period ends); background memory work of such a user waits until then.

A check reads the rollup (`usage_daily`) as it is when the turn starts, so turns already in
flight may take a user past the budget, by at most what they cost; the next one is refused.
Periods are UTC calendar days and months, on `engine.usage.clock` (tests move it).

Cost on the hot path: which users have quotas (a small table set in the admin) is held per
process in `quota_book`, loaded when the process builds its first agent and, on PostgreSQL,
read again when older than STELLO_AUTH_CACHE_SECONDS, so a user without quotas costs no round
trip; a user with quotas costs one statement per turn (what was spent in the quotas' periods).
A quota saved through the ORM (the admin) applies at once in that process (a signal), within
that TTL in the others; the embedded default is one process and keeps what it read until then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum

from spaces import pgpool
from spaces.errors import QuotaExceeded, ServiceUnavailable
from spaces.models import Space
from spaces.selectors import space_owners

from ..engine.usage import clock, current_api_key
from .models import UsageDaily, UsageQuota

SQL_ALL_QUOTAS = "SELECT q.user_id, q.id FROM usage_quotas q"

SQL_QUOTAS = """
SELECT q.period, q.max_tokens, q.max_cost, q.api_key_id, spent.tokens, spent.nanos
FROM usage_quotas q CROSS JOIN LATERAL (
  SELECT coalesce(sum(ud.input_tokens + ud.output_tokens), 0) AS tokens,
         coalesce(sum(ud.cost_nanos), 0) AS nanos
  FROM usage_daily ud
  WHERE ud.user_id = q.user_id
    AND ud.day BETWEEN (CASE WHEN q.period = 'day' THEN %(today)s ELSE %(month)s END)
                   AND %(today)s
    AND (q.api_key_id IS NULL OR ud.api_key_id = q.api_key_id)
) spent
WHERE q.user_id = %(user)s AND (q.api_key_id IS NULL OR q.api_key_id = %(key)s)
"""


class QuotaBook:
    """Which users have quotas, per process (see the module's docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._users: frozenset[str] | None = None
        self._loaded_at = 0.0
        self._clock = clock

    def invalidate(self) -> None:
        self._users = None

    def fresh(self) -> bool:
        if self._users is None:
            return False
        if not pgpool.enabled():
            # The embedded default is one process, whose quota writes all pass the ORM's
            # signals (`quotas_changed`): what it holds stays right until then.
            return True
        ttl = float(settings.STELLO.get("AUTH_CACHE_SECONDS", 5.0))
        return self._clock() - self._loaded_at < ttl

    def assume(self, user_ids: frozenset[str]) -> None:
        """Hold `user_ids` as read just now (tests: a fresh database has no quotas)."""
        self._users, self._loaded_at = user_ids, self._clock()

    async def load(self) -> None:
        """Read the table again unless what is held is fresh."""
        if self.fresh():
            return
        loaded_at = self._clock()
        if pgpool.enabled():
            try:
                rows = await pgpool.fetchall(SQL_ALL_QUOTAS)
            except pgpool.DatabaseUnavailable as exc:
                raise ServiceUnavailable() from exc
        else:
            rows = await sync_to_async(_orm_all_quotas)()
        self._users, self._loaded_at = frozenset(str(user) for user, _ in rows), loaded_at

    async def any(self) -> bool:
        await self.load()
        return bool(self._users)

    async def has_quotas(self, user_id: Any) -> bool:
        await self.load()
        assert self._users is not None
        return str(user_id) in self._users


def _orm_all_quotas() -> list[tuple[Any, Any]]:
    return list(UsageQuota.objects.values_list("user_id", "id"))


quota_book = QuotaBook()


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """One quota and what was spent against it in its current period."""

    period: str
    max_tokens: int | None
    max_cost: Decimal | None
    api_key_id: int | None
    tokens: int
    nanos: int

    @property
    def exceeded(self) -> bool:
        return (self.max_tokens is not None and self.tokens >= self.max_tokens) or (
            self.max_cost is not None and self.nanos >= int(self.max_cost * 1_000_000_000))


def period_start(period: str, today: date) -> date:
    return today if period == "day" else today.replace(day=1)


def period_end(period: str, now: datetime) -> datetime:
    """The first instant (UTC) after the period that contains `now`."""
    day = now.astimezone(UTC).date()
    if period == "day":
        end = day + timedelta(days=1)
    else:
        end = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return datetime(end.year, end.month, end.day, tzinfo=UTC)


def seconds_until_end(period: str, now: datetime) -> int:
    return max(1, math.ceil((period_end(period, now) - now).total_seconds()))


async def quota_uses(user_id: Any, api_key_id: int | None) -> list[QuotaUse]:
    """The user's quotas that apply to this key (the user's own and the key's), with what was
    spent in their current periods. One statement on PostgreSQL."""
    today = clock.now().astimezone(UTC).date()
    if pgpool.enabled():
        try:
            rows = await pgpool.fetchall(SQL_QUOTAS, {
                "user": user_id, "key": api_key_id, "today": today,
                "month": today.replace(day=1)})
        except pgpool.DatabaseUnavailable as exc:
            raise ServiceUnavailable() from exc
        return [QuotaUse(*row) for row in rows]
    return await _orm_quota_uses(user_id, api_key_id, today)


@sync_to_async
def _orm_quota_uses(user_id: Any, api_key_id: int | None, today: date) -> list[QuotaUse]:
    # The embedded (SQLite) default: one hop to the ORM for the whole check.
    uses = []
    quotas = UsageQuota.objects.filter(Q(api_key__isnull=True) | Q(api_key_id=api_key_id),
                                       user_id=user_id)
    for quota in quotas:
        rows = UsageDaily.objects.filter(
            user_id=user_id, day__gte=period_start(quota.period, today), day__lte=today)
        if quota.api_key_id is not None:
            rows = rows.filter(api_key_id=quota.api_key_id)
        sums = rows.aggregate(inp=Sum("input_tokens"), out=Sum("output_tokens"),
                              nanos=Sum("cost_nanos"))
        uses.append(QuotaUse(quota.period, quota.max_tokens, quota.max_cost, quota.api_key_id,
                             (sums["inp"] or 0) + (sums["out"] or 0), sums["nanos"] or 0))
    return uses


async def over_budget(user_id: Any, api_key_id: int | None) -> int | None:
    """None when the user (with this key) may run LLM work now; else the seconds until every
    spent budget's period has ended."""
    if not await quota_book.has_quotas(user_id):
        return None
    uses = await quota_uses(user_id, api_key_id)
    spent = [use for use in uses if use.exceeded]
    if not spent:
        return None
    now = clock.now()
    return max(seconds_until_end(use.period, now) for use in spent)


async def check_turn(user_id: Any, api_key_id: int | None) -> None:
    """Raise QuotaExceeded when a turn of this user with this key must not start."""
    retry_after = await over_budget(user_id, api_key_id)
    if retry_after is not None:
        raise QuotaExceeded(f"Usage quota exceeded; it renews in {retry_after} seconds",
                            retry_after=retry_after)


def quotas_changed(**signal: Any) -> None:
    """Forget what this process knows of quotas: connected to UsageQuota's post_save and
    post_delete, so a quota saved through the ORM (the admin) applies at once here. Again
    after the commit: a read between the save and the commit would hold the old table."""
    quota_book.invalidate()
    if signal:  # from an ORM save (sync code): its transaction may still be open
        transaction.on_commit(quota_book.invalidate)


async def admit_turn(user_id: Any, api_key_id: int | None) -> None:
    """Before a turn (REST or WebSocket): refuse it when a budget is spent, else charge what it
    calls to this key (`engine.usage.current_api_key`, which follows the turn into its task)."""
    await check_turn(user_id, api_key_id)
    current_api_key.set(api_key_id)


SQL_SPACE_OWNER = "SELECT sp.user_id FROM spaces sp WHERE sp.id = %s"


async def space_over_budget(space_id: str) -> int | None:
    """For background memory work of a space: None when its owner may spend now, else the
    seconds until their spent budgets renew. Only the user's own quotas apply (the work was
    asked for by no key). No round trip while nobody has quotas."""
    if not await quota_book.any():
        return None
    owner = space_owners.get(str(space_id))
    if owner is None:
        if pgpool.enabled():
            row = await pgpool.fetchone(SQL_SPACE_OWNER, (space_id,))
        else:
            row = await Space.objects.filter(pk=space_id).values_list("owner_id").afirst()
        if row is None:
            return None  # the space is gone: the job finds nothing to do
        owner = row[0]
    return await over_budget(owner, None)

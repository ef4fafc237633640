"""Reads of usage: sums over the daily rollup, never over the calls themselves, so a report
costs the same with millions of calls recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, timedelta
from typing import Any

from django.db.models import Q, Sum
from django.db.models.functions import Coalesce

from spaces.errors import InvalidInput

from ..engine.usage import clock
from .models import NO_KEY, UsageDaily

GROUPS = {"day": "day", "session": "session_id", "model": "model", "key": "api_key_id"}
DEFAULT_DAYS = 30
MAX_DAYS = 3660  # ten years: a range beyond that is a typo, not a report


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: date
    end: date  # included
    group_by: str | None


def parse_usage_query(params: Any) -> UsageQuery:
    """`from` / `to` (YYYY-MM-DD, UTC, both included; default the last 30 days) and `groupBy`
    (day, session, model or key). Anything else: InvalidInput (400), naming the parameter."""
    today = clock.now().astimezone(UTC).date()
    end = _date(params, "to") or today
    start = _date(params, "from") or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidInput("from must not be after to")
    if (end - start).days >= MAX_DAYS:
        raise InvalidInput(f"the range must be shorter than {MAX_DAYS} days")
    group_by = params.get("groupBy")
    if group_by is not None and group_by not in GROUPS:
        raise InvalidInput("groupBy must be one of day, session, model, key")
    return UsageQuery(start, end, group_by)


def _date(params: Any, name: str) -> date | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a date (YYYY-MM-DD)") from None


_SUMS = {
    "calls": Coalesce(Sum("calls"), 0),
    "inputTokens": Coalesce(Sum("input_tokens"), 0),
    "outputTokens": Coalesce(Sum("output_tokens"), 0),
    "cachedTokens": Coalesce(Sum("cached_tokens"), 0),
    "durationMs": Coalesce(Sum("duration_ms"), 0),
    "nanos": Coalesce(Sum("cost_nanos"), 0),
}


def _totals(row: dict[str, Any]) -> dict[str, Any]:
    nanos = row.pop("nanos")
    return {**{k: int(row[k]) for k in ("calls", "inputTokens", "outputTokens",
                                         "cachedTokens")},
            "cost": int(nanos) / 1e9, "durationMs": int(row["durationMs"])}


def _key(group_by: str, value: Any) -> str | None:
    if group_by == "key":
        return None if value in (None, NO_KEY) else str(value)
    return value.isoformat() if group_by == "day" else str(value)


def usage_report(*, user_id: Any, query: UsageQuery, space_id: str | None = None
                 ) -> dict[str, Any]:
    """The caller's usage (of one space when `space_id` is given) in the query's range."""
    rows = UsageDaily.objects.filter(Q(user_id=user_id), day__gte=query.start,
                                     day__lte=query.end)
    if space_id is not None:
        rows = rows.filter(space_id=space_id)
    if query.group_by is None:
        return {"from": query.start.isoformat(), "to": query.end.isoformat(),
                "groupBy": None, "totals": _totals(rows.aggregate(**_SUMS)), "groups": []}
    # One scan of the rollup: the totals are the groups' sums (a second aggregate query
    # doubled the cost of a report over millions of calls).
    column = GROUPS[query.group_by]
    sums = dict.fromkeys(_SUMS, 0)
    groups = []
    for row in rows.values(column).annotate(**_SUMS).order_by(column):
        value = row.pop(column)
        for name in sums:
            sums[name] += row[name]
        groups.append({"key": _key(query.group_by, value), **_totals(row)})
    totals = _totals(sums)
    return {"from": query.start.isoformat(), "to": query.end.isoformat(),
            "groupBy": query.group_by, "totals": totals, "groups": groups}


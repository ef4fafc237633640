"""Admin of usage accounting: the quotas (editable), the recorded calls and the daily rollup
(read-only), with totals per user and per space over the filtered rollup."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Sum
from django.http import HttpRequest

from .models import LLMCall, UsageDaily, UsageQuota

TOTALS_SHOWN = 50  # rows per totals table: the biggest spenders


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageQuota)
class UsageQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "api_key", "period", "max_tokens", "max_cost")
    list_filter = ("period",)
    search_fields = ("user__username",)
    raw_id_fields = ("user", "api_key")


@admin.register(LLMCall)
class LLMCallAdmin(ReadOnlyAdmin):
    list_display = ("at", "user", "kind", "provider", "model", "input_tokens", "output_tokens",
                    "cached_tokens", "duration_ms", "cost", "space_id", "session_id")
    list_filter = ("kind", "provider", "model")
    search_fields = ("user__username", "=space_id", "=session_id", "=turn_id")
    date_hierarchy = "at"
    list_select_related = ("user",)
    show_full_result_count = False  # millions of rows: no COUNT(*) per page

    @admin.display(description="cost (USD)")
    def cost(self, obj: LLMCall) -> str:
        return f"{obj.cost_nanos / 1e9:.6f}"


def _totals(queryset: Any, group: str, label: str, name: Any) -> dict[str, Any]:
    rows = (queryset.values(group)
            .annotate(calls_=Sum("calls"), input_=Sum("input_tokens"),
                      output_=Sum("output_tokens"), cached_=Sum("cached_tokens"),
                      nanos_=Sum("cost_nanos"))
            .order_by("-nanos_", "-input_")[:TOTALS_SHOWN])
    return {"label": label, "items": [
        {"name": name(row[group]), "calls": row["calls_"], "input": row["input_"],
         "output": row["output_"], "cached": row["cached_"],
         "cost": f"{(row['nanos_'] or 0) / 1e9:.6f}"} for row in rows]}


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ("day", "user", "space_id", "session_id", "api_key_id", "model", "calls",
                    "input_tokens", "output_tokens", "cached_tokens", "cost")
    list_filter = ("provider", "model")
    search_fields = ("user__username", "=space_id", "=session_id")
    date_hierarchy = "day"
    list_select_related = ("user",)

    @admin.display(description="cost (USD)")
    def cost(self, obj: UsageDaily) -> str:
        return f"{obj.cost_nanos / 1e9:.6f}"

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:  # totals over what the filters selected
            from django.contrib.auth import get_user_model

            queryset = changelist.queryset
            users = dict(get_user_model().objects.filter(
                pk__in=queryset.values("user")).values_list("pk", "username"))
            response.context_data["usage_totals"] = [
                ("Totals per user", _totals(queryset, "user", "User",
                                            lambda pk: users.get(pk, pk))),
                ("Totals per space", _totals(queryset, "space_id", "Space", str)),
            ]
        return response

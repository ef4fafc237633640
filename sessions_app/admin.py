"""Staff browse sessions: the session itself, its tree position and its records are read-only;
only the content of existing data slots (prompts, memory, insight...) may be edited.

Sessions are neither added nor deleted here: a session belongs to its space's tree (topology,
one main session per space), which only the engine and the space services keep consistent.

On PostgreSQL the background memory jobs are listed too (Procrastinate > jobs: status, runs,
events), with the last error of each failed run.
"""

from __future__ import annotations

from django.apps import apps
from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest

from .models import MemoryJobError, Record, Session, SessionData, TopologyNode


class ReadOnlyInlineMixin:
    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class TopologyNodeInline(ReadOnlyInlineMixin, admin.StackedInline):
    model = TopologyNode
    fk_name = "session"
    fields = readonly_fields = ("parent", "source_session", "depth", "index", "label")
    verbose_name = verbose_name_plural = "position in the tree"


class SessionDataInline(admin.TabularInline):
    """A slot's content is editable; slots are not added or removed here."""

    model = SessionData
    fields = ("key", "content", "updated_at")
    readonly_fields = ("key", "updated_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class RecordInline(ReadOnlyInlineMixin, admin.TabularInline):
    """The L3 records, oldest first. Read-only: history is never rewritten from the admin."""

    model = Record
    fields = readonly_fields = ("role", "content", "tool_calls", "tool_call_id", "timestamp")
    ordering = ("id",)
    classes = ("collapse",)


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("label", "space", "role", "status", "turn_count", "last_active_at")
    list_filter = ("role", "status")
    list_select_related = ("space",)
    search_fields = ("label", "id")
    fields = readonly_fields = (
        "id",
        "space",
        "label",
        "role",
        "status",
        "scope",
        "tags",
        "metadata",
        "turn_count",
        "created_at",
        "updated_at",
        "last_active_at",
    )
    inlines = (TopologyNodeInline, SessionDataInline, RecordInline)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Session, form, change: bool) -> None:
        """The session's own fields are read-only: nothing to save (and no updated_at bump)."""

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if any(formset.has_changed() for formset in formsets):
            # Running agents may hold the old slot content: rebuild them after the commit.
            from .runtime.pool import runtimes

            space_id = str(form.instance.space_id)
            transaction.on_commit(lambda: runtimes.evict_everywhere(space_id))


if apps.is_installed("procrastinate.contrib.django"):  # the job queue (PostgreSQL only)
    # Importing the queue's admin registers its job admin; ours replaces it, adding the error.
    from procrastinate.contrib.django.admin import ProcrastinateJobAdmin
    from procrastinate.contrib.django.models import ProcrastinateJob

    class MemoryJobAdmin(ProcrastinateJobAdmin):
        list_display = [*ProcrastinateJobAdmin.list_display, "attempts", "last_error"]
        fields = [*ProcrastinateJobAdmin.fields, "last_error"]

        def get_readonly_fields(self, request: HttpRequest, obj=None):
            return [*super().get_readonly_fields(request, obj), "last_error"]

        @admin.display(description="last error")
        def last_error(self, job: ProcrastinateJob) -> str:
            failure = MemoryJobError.objects.filter(job_id=job.pk).first()
            return f"run {failure.attempt}: {failure.error}" if failure else ""

    admin.site.unregister(ProcrastinateJob)
    admin.site.register(ProcrastinateJob, MemoryJobAdmin)

"""Staff browse sessions: the session itself, its tree position and its records are read-only;
only the content of existing data slots (prompts, memory, insight...) may be edited, through
the same engine call as the REST API (`SpaceAgent.write_slot`, under the session's lock).

Sessions are neither added nor deleted here: a session belongs to its space's tree (topology,
one main session per space), which only the engine and the space services keep consistent.
A session's records are listed on their own paged list (`RecordAdmin`), reached from the
session's page: a long session has thousands.

On PostgreSQL the background memory jobs are listed too (Procrastinate > jobs: status, runs,
events), with the last error of each failed run.
"""

from __future__ import annotations

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from . import conf
from .engine.core import check_key, size_of
from .engine.errors import StelloError
from .models import CoreData, MemoryJobError, Record, Session, SessionData, TopologyNode
from .services import session_slot_write


def records_link(session: Session) -> str:
    url = reverse("admin:sessions_app_record_changelist")
    return format_html('<a href="{}?session__id__exact={}">{} records</a>', url, session.pk,
                       session.record_count)


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


@admin.register(Record)
class RecordAdmin(admin.ModelAdmin):
    """The L3 records, read-only (history is never rewritten from the admin), paged; filtered
    to one session by the link on that session's page."""

    list_display = ("timestamp", "role", "short_content", "session")
    list_filter = ("role",)
    list_select_related = ("session",)
    list_per_page = 100
    show_full_result_count = False  # no second COUNT over every record
    ordering = ("session_id", "id")
    fields = readonly_fields = ("session", "role", "content", "tool_calls", "tool_call_id",
                                "timestamp")

    @admin.display(description="content")
    def short_content(self, record: Record) -> str:
        return Truncator(record.content).chars(120)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The link on a session's page; a filter listing every session would be far too long.
        return lookup == "session__id__exact" or super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("label", "space", "role", "status", "turn_count", "last_active_at")
    list_filter = ("role", "status", ("space", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("space",)
    search_fields = ("label", "id", "space__label")
    fields = readonly_fields = (
        "id",
        "space",
        "label",
        "role",
        "status",
        "scope",
        "metadata",
        "turn_count",
        "records",
        "created_at",
        "updated_at",
        "last_active_at",
    )
    inlines = (TopologyNodeInline, SessionDataInline)

    @admin.display(description="records")
    def records(self, session: Session) -> str:
        return records_link(session)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Session, form, change: bool) -> None:
        """The session's own fields are read-only: nothing to save (and no updated_at bump)."""

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        """Only slot contents change here, each through `SpaceAgent.write_slot` like
        `PUT .../<slot>` (the other inlines are read-only)."""
        session = form.instance
        for formset in formsets:
            formset.save(commit=False)  # saves nothing; tells the change message what changed
            if formset.model is not SessionData:
                continue
            for slot, _fields in formset.changed_objects:
                try:
                    session_slot_write(space_id=str(session.space_id),
                                       session_id=str(session.pk), key=slot.key,
                                       content=slot.content,
                                       own_loop=not hasattr(request, "scope"))
                except StelloError as exc:  # e.g. the session is busy or archived
                    request.slot_refused = True
                    self.message_user(request, f"{slot.key} was not saved: {exc.message}",
                                      messages.ERROR)

    def response_change(self, request: HttpRequest, obj: Session) -> HttpResponse:
        if getattr(request, "slot_refused", False):  # back to the form, without "changed"
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)


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


class CoreDataForm(forms.ModelForm):
    """The key rule and the size limits of REST and the agent's tools."""

    class Meta:
        model = CoreData
        fields = ("space", "path", "value")

    def clean_path(self) -> str:
        try:
            return check_key(self.cleaned_data["path"])
        except StelloError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict:
        cleaned = super().clean()
        space, path = cleaned.get("space"), cleaned.get("path")
        if space is None or path is None or "value" not in cleaned:
            return cleaned
        limits = conf.engine_settings()
        others = dict(CoreData.objects.filter(space=space).exclude(path=path)
                      .values_list("path", "value"))
        size = size_of(cleaned["value"])
        if size > limits.core_max_value_bytes:
            self.add_error("value", f"{size} bytes; at most {limits.core_max_value_bytes} "
                                    "are allowed")
        elif size_of({**others, path: cleaned["value"]}) > limits.core_max_total_bytes:
            self.add_error("value", f"the space's core would exceed "
                                    f"{limits.core_max_total_bytes} bytes")
        return cleaned


@admin.register(CoreData)
class CoreDataAdmin(admin.ModelAdmin):
    """The spaces' core memory (L1), one row per key; REST and the agent see edits at once."""

    form = CoreDataForm
    list_display = ("path", "space")
    list_select_related = ("space",)
    search_fields = ("path", "space__label", "space__id")
    autocomplete_fields = ("space",)


from .accounting import admin as _usage_admin  # noqa: E402, F401 - registers the usage models

"""Admin for spaces and API keys. Every write goes through the services, like the REST API:
a space's root session and its system_prompt slot stay in step, and a key exists only hashed."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from .apikeys import apikey_create, apikey_rename, apikey_revoke
from .models import ApiKey, IdempotencyRecord, Space
from .services import EDITABLE_FIELDS, space_create, space_delete, space_update

# The admin's "View site" link: the server has no home page, its API documentation is the
# closest thing (the default, "/", would be a 404).
admin.site.site_url = "/api/docs/"


def _adopt(target: models.Model, saved: models.Model) -> None:
    """Make the admin's unsaved instance `target` the row a service saved as `saved`: the admin
    keeps using its own object (log entry, redirect) after save_model."""
    for field in saved._meta.concrete_fields:
        setattr(target, field.attname, getattr(saved, field.attname))
    target._state.adding = False
    target._state.db = saved._state.db


class SpaceAdminForm(forms.ModelForm):
    class Meta:
        model = Space
        fields = ("owner", *EDITABLE_FIELDS)
        widgets = {"label": forms.TextInput(attrs={"size": 60})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A blank prompt means "not set" (None: fall back to the default), as in the REST API,
        # never an empty prompt.
        for name in ("system_prompt", "consolidate_prompt", "integrate_prompt"):
            if name in self.fields:
                self.fields[name].empty_value = None

    def clean_config(self) -> dict[str, Any]:
        config = self.cleaned_data.get("config")
        if config is None:
            return {}
        if not isinstance(config, dict):
            raise forms.ValidationError("config must be a JSON object")
        return config


@admin.register(Space)
class SpaceAdmin(admin.ModelAdmin):
    form = SpaceAdminForm
    list_display = ("label", "owner", "sessions", "created_at", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("label",)
    raw_id_fields = ("owner",)
    fields = ("id", "owner", "sessions", *EDITABLE_FIELDS, "created_at", "updated_at")
    SHOWN_ONCE_SAVED = ("id", "sessions", "created_at", "updated_at")

    @admin.display(description="sessions")
    def sessions(self, space: Space) -> str:
        """A link to the session list filtered to this space (the sessions app's admin)."""
        try:
            url = reverse("admin:sessions_app_session_changelist")
        except NoReverseMatch:  # the sessions app is not installed
            return "-"
        return format_html('<a href="{}?space__id__exact={}">sessions</a>', url, space.pk)

    def get_readonly_fields(self, request: HttpRequest, obj: Space | None = None):
        # The owner is chosen once, at creation: space_update cannot move a space.
        return (*self.SHOWN_ONCE_SAVED, "owner") if obj is not None else self.SHOWN_ONCE_SAVED

    def get_fields(self, request: HttpRequest, obj: Space | None = None):
        if obj is None:  # nothing to show before the row exists
            return [f for f in self.fields if f not in self.SHOWN_ONCE_SAVED]
        return self.fields

    def save_model(self, request: HttpRequest, obj: Space, form, change: bool) -> None:
        values = {field: form.cleaned_data.get(field) for field in EDITABLE_FIELDS}
        if not change:
            _adopt(obj, space_create(owner=form.cleaned_data["owner"], **values))
            return
        changes = {field: values[field] for field in EDITABLE_FIELDS if field in form.changed_data}
        if changes:
            space_update(space=obj, changes=changes)

    def get_deleted_objects(self, objs, request: HttpRequest):
        # Permission to delete a space is enough: everything under it goes with it (the
        # database cascades). Without this, the session admin's refusal to delete a single
        # session (it would break the tree) would block deleting whole spaces.
        deleted, model_count, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, model_count, set(), protected

    def delete_model(self, request: HttpRequest, obj: Space) -> None:
        space_delete(space=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Space]) -> None:
        # The bulk "Delete selected" action: one service call per space, all or nothing.
        with transaction.atomic():
            for space in queryset:
                space_delete(space=space)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here through apikey_create (the key is shown once, in a message) and
    retired with the "Revoke selected keys" action; the hash is never shown. Keys are not
    deleted from the admin: a revoked key keeps its history."""

    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "active")
    list_filter = ("revoked",)
    list_select_related = ("user",)
    search_fields = ("prefix", "name", "user__username")
    raw_id_fields = ("user",)
    actions = ["revoke_selected"]
    change_fields = ("prefix", "user", "name", "created_at", "last_used_at", "revoked")

    @admin.display(boolean=True, description="active", ordering="-revoked")
    def active(self, apikey: ApiKey) -> bool:
        # A green tick for a key that works: a "revoked" column put the tick on dead keys.
        return not apikey.revoked

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        # The add form is only user + name: apikey_create makes the prefix and the hash.
        return self.change_fields if obj is not None else ("user", "name")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return ()
        return tuple(f for f in self.change_fields if f != "name")

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            if "name" in form.changed_data:
                apikey_rename(apikey=obj, name=form.cleaned_data["name"])
            return
        apikey, raw_key = apikey_create(
            user=form.cleaned_data["user"], name=form.cleaned_data["name"]
        )
        _adopt(obj, apikey)
        self.message_user(
            request,
            f"API key {apikey.prefix} created. Copy it now, it will not be shown again: {raw_key}",
            messages.SUCCESS,
        )

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        prefixes = list(queryset.filter(revoked=False).values_list("prefix", flat=True))
        with transaction.atomic():
            for prefix in prefixes:
                apikey_revoke(prefix=prefix)
        self.message_user(request, f"Revoked {len(prefixes)} API key(s).", messages.SUCCESS)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    """Stored answers of idempotent requests: to look at, or delete; never to edit (an edited
    answer would be replayed as if the server had sent it)."""

    list_display = ("key", "user", "method", "path", "status", "created_at", "expires_at")
    list_filter = ("method", "status")
    search_fields = ("key", "path", "user__username")
    readonly_fields = ("user", "key", "fingerprint", "method", "path", "status", "content_type",
                       "created_at", "expires_at")
    exclude = ("body",)
    list_select_related = ("user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

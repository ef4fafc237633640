"""`manage.py listapikeys [USERNAME]`: a table of keys (never the key itself: it is not stored)."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from spaces.models import ApiKey

COLUMNS = ("PREFIX", "OWNER", "NAME", "CREATED", "LAST USED", "REVOKED")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "never"


class Command(BaseCommand):
    help = "List API keys (all, or USERNAME's): prefix, owner, name, dates, revoked."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", nargs="?")

    def handle(self, *args, username: str | None, **options) -> None:
        keys = ApiKey.objects.select_related("user").order_by("created_at", "id")
        if username is not None:
            User = get_user_model()
            if not User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists():
                raise CommandError(f"No user named {username!r}")
            keys = keys.filter(**{f"user__{User.USERNAME_FIELD}": username})
        rows = [
            (
                k.prefix,
                k.user.get_username(),
                k.name or "-",
                _when(k.created_at),
                _when(k.last_used_at),
                "yes" if k.revoked else "no",
            )
            for k in keys
        ]
        if not rows:
            self.stdout.write("No API keys.")
            return
        widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
        for row in [COLUMNS, *rows]:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())

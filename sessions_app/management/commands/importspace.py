"""`manage.py importspace FILE --owner USERNAME`: a new space from an export; its id is printed
alone on the last line. All or nothing: a bad file changes nothing and names its line."""

from __future__ import annotations

import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app.portability import import_space
from spaces.errors import StelloError


class Command(BaseCommand):
    help = "Import an NDJSON space export as a new space of USERNAME ('-' reads stdin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file")
        parser.add_argument("--owner", required=True, help="username of the new space's owner")

    def handle(self, *args, file: str, owner: str, **options) -> None:
        User = get_user_model()
        user = User._default_manager.filter(**{User.USERNAME_FIELD: owner}).first()
        if user is None:
            raise CommandError(f"no user {owner}")
        try:
            if file == "-":
                space = import_space(user.pk, sys.stdin.buffer)
            else:
                with open(file, "rb") as stream:
                    space = import_space(user.pk, stream)
        except OSError as exc:
            raise CommandError(str(exc)) from None
        except StelloError as exc:
            raise CommandError(f"import refused: {exc.message}") from None
        self.stdout.write(f"Imported space {space.label!r} for {owner}:")
        self.stdout.write(str(space.id))

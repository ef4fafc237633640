"""`manage.py exportspace SPACE_ID [--output FILE]`: the space as NDJSON (stdout by default)."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app.portability import export_lines
from sessions_app.store.common import parse_uuid
from spaces.models import Space


class Command(BaseCommand):
    help = "Export a space (sessions, tree, slots, core data, messages) as NDJSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("space_id")
        parser.add_argument("--output", "-o", help="write here instead of stdout")

    def handle(self, *args, space_id: str, output: str | None, **options) -> None:
        parsed = parse_uuid(space_id)
        if parsed is None or not Space.objects.filter(pk=parsed).exists():
            raise CommandError(f"no space {space_id}")
        if output is None:
            for line in export_lines(str(parsed)):
                sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            return
        with open(output, "wb") as out:
            for line in export_lines(str(parsed)):
                out.write(line)
        self.stderr.write(f"Exported space {parsed} to {output}.")

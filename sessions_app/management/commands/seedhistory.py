"""`manage.py seedhistory SPACE_ID --messages N`: a new child session of the space holding N
synthetic messages (alternating user / assistant), for the benchmark's message-page phase. A
session that long would take hours of turns to build over HTTP. Prints the session id alone on
the last line."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from sessions_app.models import Record, Session, TopologyNode
from spaces.models import Space

BATCH = 5000


class Command(BaseCommand):
    help = "Create a child session with N synthetic messages in SPACE_ID (for benchmarks)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("space_id")
        parser.add_argument("--messages", type=int, default=100_000)
        parser.add_argument("--label", default="seeded history")

    def handle(self, *args, space_id: str, messages: int, label: str, **options) -> None:
        if messages < 0:
            raise CommandError("--messages must not be negative")
        space = Space.objects.filter(pk=space_id).first()
        if space is None:
            raise CommandError(f"no space {space_id}")
        now = timezone.now()
        with transaction.atomic():
            root = TopologyNode.objects.select_for_update().get(space=space, parent__isnull=True)
            index = root.children.count()
            session = Session.objects.create(space=space, label=label, record_count=messages,
                                             metadata={"sourceSessionId": str(root.session_id)})
            TopologyNode.objects.create(session=session, space=space, parent=root,
                                        source_session_id=root.session_id, depth=1,
                                        index=index, label=label)
            for start in range(0, messages, BATCH):
                Record.objects.bulk_create([
                    Record(session=session, role="user" if i % 2 == 0 else "assistant",
                           content=f"seeded message {i}", timestamp=now)
                    for i in range(start, min(start + BATCH, messages))
                ])
        self.stdout.write(f"Seeded {messages} messages into a new session of {space_id}:")
        self.stdout.write(str(session.id))

"""`manage.py sweepidempotencykeys`: delete the expired answers of idempotent requests."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from spaces.idempotency import sweep_expired


class Command(BaseCommand):
    help = (
        "Delete stored Idempotency-Key answers older than STELLO_IDEMPOTENCY_KEY_TTL_SECONDS. "
        "Expired answers are never replayed; each server process also sweeps them hourly."
    )

    def handle(self, *args, **options) -> None:
        deleted = sweep_expired()
        self.stdout.write(f"Deleted {deleted} expired idempotency record(s).")

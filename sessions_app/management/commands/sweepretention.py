"""`manage.py sweepretention`: apply every space's retention policy once (archive idle sessions,
delete long-archived ones) and print the counts. Serving processes also do this periodically."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand

from sessions_app import retention
from sessions_app.runtime.pool import runtimes


async def _sweep() -> retention.SweepCounts:
    # A runtime for this one call: archiving goes through the agents (session locks, memory
    # consolidation), whose background work is finished before the command returns.
    runtime = runtimes.current(one_call=True)
    try:
        return await retention.sweep(runtime.agent)
    finally:
        await runtimes.aclose_current(drain=True)


class Command(BaseCommand):
    help = "Apply the spaces' retention policies once."

    def handle(self, *args, **options) -> None:
        counts = async_to_sync(_sweep)()
        self.stdout.write(f"spaces={counts.spaces} archived={counts.archived} "
                          f"deleted={counts.deleted} busy={counts.busy}")

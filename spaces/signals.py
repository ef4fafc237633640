"""Space lifecycle events, sent by the services inside their transaction.

`sessions_app` listens (root session, prompt sync, runtime eviction): it depends on `spaces`,
never the reverse, so the services announce what happened instead of calling it.
"""

from django.dispatch import Signal

space_created = Signal()  # kwargs: space
space_updated = Signal()  # kwargs: space, changed (set of field names)
space_deleted = Signal()  # kwargs: space_id (str)

# The async twin of `space_created` for the PostgreSQL hot path: sent with `asend` inside the
# space's transaction, with the psycopg connection (kwargs: space, connection); async receivers
# add their statements to that transaction.
space_inserted = Signal()

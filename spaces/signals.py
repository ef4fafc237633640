"""Space lifecycle events, sent by the services inside their transaction.

`sessions_app` listens (root session, prompt sync, runtime eviction): it depends on `spaces`,
never the reverse, so the services announce what happened instead of calling it.
"""

from django.dispatch import Signal

space_created = Signal()  # kwargs: space
space_updated = Signal()  # kwargs: space, changed (set of field names)
space_deleted = Signal()  # kwargs: space_id (str)

# The twin of `space_created` for the PostgreSQL hot path, where `aspace_create` writes a space
# and everything that comes with it in ONE statement: sent (synchronously, no I/O) while that
# statement is composed; each receiver returns a list of `(sql, params)`, plain data-modifying
# statements with positional `%s` parameters, which run as parts of it (kwargs: space).
space_rows = Signal()

# Sent (synchronously, no I/O) with a space's new `config` before it is written; a receiver
# that finds it invalid raises `spaces.errors.InvalidInput` naming the field (kwargs: config).
space_config_check = Signal()

"""Write paths for session data that do not need the engine (no LLM, no session lock)."""

from __future__ import annotations

from django.db import transaction

from .models import SessionData
from .selectors import session_in_space


@transaction.atomic
def session_slot_put(*, space_id, session_id, key: str, content: str) -> str:
    session = session_in_space(space_id=space_id, session_id=session_id)
    SessionData.objects.update_or_create(session=session, key=key, defaults={"content": content})
    return content

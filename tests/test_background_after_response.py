"""Background memory work started by a request runs after that request has ended.

Through the ASGI app (Django's AsyncClient), as a real server runs it: the consolidation a
turn triggers must not depend on anything owned by the finished request.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from sessions_app.models import SessionData
from sessions_app.runtime.pool import runtimes
from spaces.apikeys import apikey_create
from tests.conftest import make_user


@pytest.mark.django_db(transaction=True)
async def test_consolidation_triggered_by_a_rest_turn_completes_after_the_response() -> None:
    user = await sync_to_async(make_user)("carol")
    _, key = await sync_to_async(apikey_create)(user=user)
    client = AsyncClient()
    auth = {"X-API-Key": key}
    try:
        space = (await client.post("/spaces", {"label": "S"}, content_type="application/json",
                                   headers=auth)).json()
        tree = (await client.get(f"/spaces/{space['id']}/sessions", headers=auth)).json()
        child = (await client.post(f"/spaces/{space['id']}/sessions/{tree['id']}/fork",
                                   {"label": "Kid"}, content_type="application/json",
                                   headers=auth)).json()["id"]
        for n in range(3):
            response = await client.post(f"/spaces/{space['id']}/sessions/{child}/turn",
                                         {"input": f"q{n}"}, content_type="application/json",
                                         headers=auth)
            assert response.status_code == 200
        await runtimes.current().drain()  # the request is over; its jobs still run
        memory = await SessionData.objects.filter(session_id=child, key="memory").afirst()
        assert memory is not None and "q2" in memory.content
        synthesis = await SessionData.objects.filter(session_id=tree["id"], key="memory").afirst()
        assert synthesis is not None and "Kid" in synthesis.content
    finally:
        await runtimes.aclose_current()

"""The session REST API. Views translate HTTP to a selector, a service or the engine.

Operations that run the engine (turn, fork, archive, consolidate, integrate) wait on the LLM
and the session lock; they reach the async engine through `run_with_runtime`. Every route
checks the space first (404 / 403) and then that the session belongs to that space (404).
"""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from spaces.selectors import space_for_user

from .. import selectors
from ..engine.errors import InvalidInput
from ..engine.fork import parse_fork_options
from ..runtime.bridge import run_with_runtime
from ..services import session_slot_put
from ..wire import archive_json, fork_child_json, session_meta_json


def body_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput("Request body must be a JSON object")
    return data


def required_text(data: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidInput(f"{key} is required")
    return value


class SpaceScopedView(APIView):
    """Resolves the space of the URL for its owner (404 `Space not found`, 403 `Forbidden`)."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.space = space_for_user(user_id=request.user.id, space_id=kwargs["space_id"])
        self.space_id = str(self.space.id)


class SessionTreeView(SpaceScopedView):
    def get(self, request, space_id):
        return Response(selectors.session_tree(space_id=self.space_id))


class SessionDetailView(SpaceScopedView):
    def get(self, request, space_id, session_id):
        meta = selectors.session_detail(space_id=self.space_id, session_id=session_id)
        return Response(session_meta_json(meta))


class SessionMessagesView(SpaceScopedView):
    def get(self, request, space_id, session_id):
        return Response(selectors.session_messages(space_id=self.space_id, session_id=session_id))


class TurnView(SpaceScopedView):
    def post(self, request, space_id, session_id):
        text = required_text(body_object(request.data), "input")

        async def turn(runtime):
            return await (await runtime.agent(self.space_id)).turn(session_id, text)

        return Response(run_with_runtime(turn).to_json())


class ForkView(SpaceScopedView):
    def post(self, request, space_id, session_id):
        options = parse_fork_options(body_object(request.data))

        async def fork(runtime):
            return await (await runtime.agent(self.space_id)).fork(session_id, options)

        meta = run_with_runtime(fork)
        return Response(fork_child_json(meta), status=status.HTTP_201_CREATED)


class ArchiveView(SpaceScopedView):
    def post(self, request, space_id, session_id):
        async def archive(runtime):
            return await (await runtime.agent(self.space_id)).archive(session_id)

        return Response(archive_json(run_with_runtime(archive)))


class ConsolidateView(SpaceScopedView):
    def post(self, request, space_id, session_id):
        async def consolidate(runtime):
            return await (await runtime.agent(self.space_id)).consolidate(session_id)

        return Response({"memory": run_with_runtime(consolidate)})


class IntegrateView(SpaceScopedView):
    def post(self, request, space_id):
        async def integrate(runtime):
            return await (await runtime.agent(self.space_id)).integrate()

        return Response(run_with_runtime(integrate).to_json())


class SlotView(SpaceScopedView):
    """`{"content": string|null}` views of one data slot; PUT only where `writable`."""

    key: str = ""

    def get(self, request, space_id, session_id):
        content = selectors.session_slot(space_id=self.space_id, session_id=session_id,
                                         key=self.key)
        return Response({"content": content})

    def put(self, request, space_id, session_id):
        data = body_object(request.data)
        if "content" not in data:
            raise InvalidInput("content is required")
        if not isinstance(data["content"], str):
            raise InvalidInput("content must be a string")
        content = session_slot_put(space_id=self.space_id, session_id=session_id, key=self.key,
                                   content=data["content"])
        return Response({"content": content})


def slot_view(key: str, *, writable: bool):
    methods = ["get", "put", "head", "options"] if writable else ["get", "head", "options"]
    return type(f"{key.title().replace('_', '')}View", (SlotView,),
                {"key": key, "http_method_names": methods}).as_view()

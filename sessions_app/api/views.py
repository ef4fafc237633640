"""The session REST API: async viewsets that translate HTTP to the store or the engine.

Every route checks the space first (404 `Space not found` / 403 `Forbidden`, through
`aspace_for_user`), then validates the body, then lets the store or the engine check that the
session belongs to that space (404). Reads go to the space's store (`space_store`); operations
that wait on the LLM or the session lock (turn, fork, archive, consolidate, integrate) go to the
space's agent in this process's runtime. Nothing here leaves the event loop: on PostgreSQL the
store and the space check talk to the database on the loop; on SQLite the ORM store crosses to
a worker thread once per unit of work.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.response import Response

from spaces.paging import paging_requested
from spaces.schema import JSON, NUL_HELP, error_responses
from spaces.selectors import aspace_id_for_user
from spaces.viewsets import AsyncViewSet

from ..accounting.quotas import admit_turn
from ..engine.agent import SpaceAgent
from ..engine.errors import InvalidInput
from ..live import busy_policy, parse_if_busy
from ..models import SessionData
from ..runtime.pool import runtimes
from ..store import space_store
from ..wire import archive_json, fork_child_json, session_meta_json
from .conversations import MESSAGE_PAGING, MESSAGES_OR_PAGE, ConversationActions
from .live import LiveTurnsActions
from .schema import SESSION_PARAMETERS, SPACE_PARAMETERS, SessionSchema, SlotDoc, slot_schema
from .serializers import (
    FORK_OPTIONS,
    SLOT_PUT,
    TURN_INPUT,
    ArchivedSessionSerializer,
    ConsolidateResponseSerializer,
    ForkChildSerializer,
    ForkOptionsSerializer,
    IntegrationResultSerializer,
    SessionMetaSerializer,
    SessionTreeNodeSerializer,
    TurnInputSerializer,
    TurnResponseSerializer,
)

Key = SessionData.Key
EFFECTIVE_SLOTS = (Key.CONSOLIDATE_PROMPT, Key.INTEGRATE_PROMPT)

LOCKED = ("Runs under the session's lock, one operation at a time across every server process; "
          "409 `SESSION_BUSY` when it cannot be had in time.")


class SpaceScopedViewSet(AsyncViewSet):
    """Routes under `/spaces/{space_id}`: the caller must own that space. The check runs with
    authentication, before the method is looked at, so another user's space answers 403 even
    for a method the route does not serve."""

    space_id: str

    async def ainitial(self, request, *args, **kwargs) -> None:
        # No ASGI scope: the sync test client or WSGI, whose event loop lives for this call.
        self.one_call_loop = getattr(request._request, "scope", None) is None
        await super().ainitial(request, *args, **kwargs)
        self.space_id = await aspace_id_for_user(user_id=request.user.id,
                                                 space_id=kwargs["space_id"])

    def store(self):
        return space_store(self.space_id)

    async def aagent(self) -> SpaceAgent:
        return await runtimes.current(one_call=self.one_call_loop).agent(self.space_id)

    async def aclose_call_loop(self) -> None:
        # The runtime of a one-call loop finishes its background work (memory jobs) first.
        await runtimes.aclose_current(drain=True)
        await super().aclose_call_loop()


def wants_effective(request) -> bool:
    """`?effective=true` (or `1`): the prompt in force, not just the session's own slot."""
    value = request.query_params.get("effective")
    if value is None or value in ("false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise InvalidInput("effective must be true or false")


def slot_action(key: str, url_path: str, *, writable: bool):
    """The `{"content": string|null}` view of one data slot: GET, plus PUT when `writable`.
    The memory prompts also answer `?effective=true` with the prompt in force and its source."""

    async def slot(self, request, space_id: str, session_id: str) -> Response:
        if request.method == "PUT":
            content = SLOT_PUT.run_validation(request.data)["content"]
            # Under the session's lock; an archived session is read-only (409), like its turns.
            await (await self.aagent()).write_slot(session_id, key, content)
            return Response({"content": content})
        if key in EFFECTIVE_SLOTS and wants_effective(request):
            content, source = await (await self.aagent()).effective_prompt(session_id, key)
            return Response({"content": content, "source": source})
        return Response({"content": await self.store().read_slot(session_id, key)})

    slot.__name__ = slot.__qualname__ = url_path.replace("-", "_")
    methods = ["get", "put"] if writable else ["get"]
    return slot_schema(SlotDoc(key, writable))(
        action(detail=True, methods=methods, url_path=url_path)(slot))


class SessionViewSet(LiveTurnsActions, ConversationActions, SpaceScopedViewSet):
    """`/spaces/{space_id}/sessions[/{session_id}[/...]]`."""

    lookup_url_kwarg = "session_id"
    schema = SessionSchema()

    @extend_schema(
        operation_id="getSessionTree",
        summary="The session tree",
        description="The space's sessions as one recursive tree from the main session.",
        tags=["sessions"],
        responses={200: OpenApiResponse(SessionTreeNodeSerializer, "The main session, with its "
                                                                 "descendants in `children`."),
                   **error_responses(403, 404)},
        parameters=SPACE_PARAMETERS,
    )
    async def list(self, request, space_id: str) -> Response:
        return Response(await self.store().session_tree())

    @extend_schema(
        operation_id="getSession",
        summary="A session's SessionMeta",
        tags=["sessions"],
        responses={200: OpenApiResponse(SessionMetaSerializer, "The session."),
                   **error_responses(403, 404)},
        parameters=SESSION_PARAMETERS,
    )
    async def retrieve(self, request, space_id: str, session_id: str) -> Response:
        return Response(session_meta_json(await self.store().get_session(session_id)))

    @extend_schema(
        operation_id="listMessages",
        summary="A session's messages",
        description="The session's raw history (L3 records), oldest first. With `limit`, "
                    "`before` or `after`: one page `{messages, nextCursor}` (see the "
                    "parameters); a bad limit or cursor answers 400.",
        tags=["sessions"],
        responses={200: OpenApiResponse(MESSAGES_OR_PAGE,
                                        "The records, oldest first (or one page of them)."),
                   **error_responses(400, 403, 404)},
        parameters=[*SESSION_PARAMETERS, *MESSAGE_PAGING],
    )
    @action(detail=True, methods=["get"])
    async def messages(self, request, space_id: str, session_id: str) -> Response:
        if paging_requested(request.query_params, "before", "after", "direction"):
            return await self.message_page(request, session_id)
        return Response(await self.store().session_messages(session_id))

    @extend_schema(
        operation_id="runTurn",
        summary="Run a turn",
        description="Sends `input` to the session and runs the tool loop to the final answer. "
                    "A client that disconnects does not lose the turn: it completes and is "
                    f"saved. {LOCKED} An archived session answers 409 `SESSION_ARCHIVED`. "
                    f"{NUL_HELP}",
        tags=["sessions"],
        request={JSON: TurnInputSerializer},
        responses={200: OpenApiResponse(TurnResponseSerializer, "The EngineTurnResult."),
                   **error_responses(400, 403, 404, 409, 413, 429, 502)},
        parameters=SESSION_PARAMETERS,
        examples=[OpenApiExample("A question", value={"input": "What did we find?"},
                                 request_only=True)],
    )
    @action(detail=True, methods=["post"])
    async def turn(self, request, space_id: str, session_id: str) -> Response:
        body = TURN_INPUT.run_validation(request.data)
        text, if_busy = body["input"], parse_if_busy(body.get("ifBusy"))
        await admit_turn(request.user.id, getattr(request.auth, "pk", None))  # 429 over quota
        agent = await self.aagent()
        wait = await busy_policy(agent, session_id, if_busy)
        # A client that hangs up does not lose the turn: it completes and is saved.
        runtime = runtimes.current(one_call=self.one_call_loop)
        result = await runtime.run_detached(agent.turn(session_id, text, wait=wait))
        return Response(result.to_json())

    @extend_schema(
        operation_id="forkSession",
        summary="Fork a child session",
        description="Creates a child of the session (an archived source is allowed). The "
                    f"source is locked while it is read. {NUL_HELP}",
        tags=["sessions"],
        request={JSON: ForkOptionsSerializer},
        responses={201: OpenApiResponse(ForkChildSerializer, "The new child."),
                   **error_responses(400, 403, 404, 409, 413)},
        parameters=SESSION_PARAMETERS,
        examples=[OpenApiExample("A focused child",
                                 value={"label": "Sources", "scope": "bibliography",
                                        "context": "inherit"},
                                 request_only=True)],
    )
    @action(detail=True, methods=["post"])
    async def fork(self, request, space_id: str, session_id: str) -> Response:
        options = FORK_OPTIONS.run_validation(request.data)
        child = await (await self.aagent()).fork(session_id, options)
        return Response(fork_child_json(child), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="archiveSession",
        summary="Archive a session",
        description="Marks a child session archived (again is harmless); its memory is then "
                    "consolidated in the background. An archived session is read-only: turns, "
                    "consolidation and prompt writes answer 409 `SESSION_ARCHIVED`; reads and "
                    "forks from it stay allowed; `unarchive` reverses it. The main session "
                    "cannot be archived: 409 `MAIN_SESSION_NOT_ARCHIVABLE`. No request body. "
                    f"{LOCKED}",
        tags=["sessions"],
        request=None,
        responses={200: OpenApiResponse(ArchivedSessionSerializer, "The archived session."),
                   **error_responses(403, 404, 409)},
        parameters=SESSION_PARAMETERS,
    )
    @action(detail=True, methods=["post"])
    async def archive(self, request, space_id: str, session_id: str) -> Response:
        return Response(archive_json(await (await self.aagent()).archive(session_id)))

    @extend_schema(
        operation_id="unarchiveSession",
        summary="Unarchive a session",
        description="Makes an archived session active again (an active one is left as it "
                    f"is). No request body. {LOCKED}",
        tags=["sessions"],
        request=None,
        responses={200: OpenApiResponse(ArchivedSessionSerializer, "The active session."),
                   **error_responses(403, 404, 409)},
        parameters=SESSION_PARAMETERS,
    )
    @action(detail=True, methods=["post"])
    async def unarchive(self, request, space_id: str, session_id: str) -> Response:
        return Response(archive_json(await (await self.aagent()).unarchive(session_id)))

    @extend_schema(
        operation_id="consolidateSession",
        summary="Consolidate a child's memory now",
        description="L3 -> L2 for a child (standard) session: the LLM distils the history into "
                    "the session's memory. The main session answers 400 (it integrates), an "
                    f"archived session 409 `SESSION_ARCHIVED`. No request body. {LOCKED}",
        tags=["memory"],
        request=None,
        responses={200: OpenApiResponse(ConsolidateResponseSerializer, "The new memory."),
                   **error_responses(400, 403, 404, 409, 502)},
        parameters=SESSION_PARAMETERS,
    )
    @action(detail=True, methods=["post"])
    async def consolidate(self, request, space_id: str, session_id: str) -> Response:
        return Response({"memory": await (await self.aagent()).consolidate(session_id)})

    system_prompt = slot_action(Key.SYSTEM_PROMPT, "system-prompt", writable=True)
    consolidate_prompt = slot_action(Key.CONSOLIDATE_PROMPT, "consolidate-prompt", writable=True)
    integrate_prompt = slot_action(Key.INTEGRATE_PROMPT, "integrate-prompt", writable=True)
    # Operators may correct what the agent remembers: the next consolidation builds on the
    # written memory, the next turn of a child reads the written insight.
    memory = slot_action(Key.MEMORY, "memory", writable=True)
    insight = slot_action(Key.INSIGHT, "insight", writable=True)


class SpaceMemoryViewSet(SpaceScopedViewSet):
    """`/spaces/{space_id}/integrate`: the space-wide memory operation."""

    @extend_schema(
        operation_id="integrateSpace",
        summary="Integrate the space now",
        description="All active children's memories -> the main session's synthesis plus one "
                    "insight per child. An archived main session answers 409 "
                    f"`SESSION_ARCHIVED`. No request body. {LOCKED}",
        tags=["memory"],
        request=None,
        responses={200: OpenApiResponse(IntegrationResultSerializer,
                                        "The synthesis and insights."),
                   **error_responses(403, 404, 409, 502)},
        parameters=SPACE_PARAMETERS,
    )
    @action(detail=False, methods=["post"])
    async def integrate(self, request, space_id: str) -> Response:
        return Response((await (await self.aagent()).integrate()).to_json())


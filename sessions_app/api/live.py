"""REST for live turns (docs/live-turns.md): turns as resources and the session's event log as
Server-Sent Events. Mixed into `SessionViewSet`, so the routes sit under
`/spaces/{space_id}/sessions/{session_id}/` and check the space like every other route.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response

from spaces.renderers import FastJSONRenderer
from spaces.schema import JSON, SEGMENT_PATTERN, error_responses

from .. import approvals, live
from ..engine.approval import Answer
from ..engine.errors import InvalidInput
from ..engine.types import LogEvent
from ..runtime.pool import runtimes
from ..wire import bootstrap_json
from .schema import SESSION_PARAMETERS


class EventStreamRenderer(BaseRenderer):
    """Lets `Accept: text/event-stream` through content negotiation (the body is streamed)."""

    media_type = "text/event-stream"
    format = "event-stream"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return json.dumps(data).encode() if data is not None else b""


class TurnSerializer(serializers.Serializer):
    turnId = serializers.CharField()
    sessionId = serializers.CharField()
    status = serializers.ChoiceField(["running", "waiting", "completed", "cancelled", "failed"],
                                     help_text="`waiting`: paused until its tool calls are "
                                               "approved or denied.")
    input = serializers.CharField()
    result = serializers.JSONField(allow_null=True, help_text="The turn's result once "
                                                              "completed (as `POST .../turn`).")
    error = serializers.CharField(allow_null=True, help_text="Why it failed.")
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()


class SseEventSerializer(serializers.Serializer):
    """One Server-Sent Event of the stream (its fields as the wire has them)."""

    id = serializers.CharField(help_text="The event's seq.")
    event = serializers.CharField(help_text="The event's type (`turn.started`, ...).")
    data = serializers.CharField(help_text="The event as JSON: `{type, seq, ...fields}`.")


class ApprovalSerializer(serializers.Serializer):
    callId = serializers.CharField(help_text="The tool call's id (as in the event).")
    name = serializers.CharField(help_text="The tool.")
    arguments = serializers.JSONField(help_text="The arguments the LLM gave.")
    status = serializers.ChoiceField(["pending", "approved", "denied"])
    reason = serializers.CharField(allow_null=True, help_text="Why (a denial's reason is "
                                                              "what the LLM is told).")
    deadline = serializers.DateTimeField(help_text="Unanswered by then: denied.")
    createdAt = serializers.DateTimeField()
    decidedAt = serializers.DateTimeField(allow_null=True)


class AnswerSerializer(serializers.Serializer):
    callId = serializers.CharField(help_text="The tool call to approve or deny.")
    approve = serializers.BooleanField(help_text="true: run it; false: the LLM is told it "
                                                 "was denied.")
    reason = serializers.CharField(required=False, allow_null=True, max_length=2000,
                                   help_text="Told to the LLM with a denial.")


class CancelledSerializer(serializers.Serializer):
    turnId = serializers.CharField()
    status = serializers.ChoiceField(["cancelled"])


TURN_ID = OpenApiParameter(
    "turn_id", str, OpenApiParameter.PATH, pattern=SEGMENT_PATTERN,
    description="The turn's id (`turnId`). A turn of another session, or any other value, "
                "answers 404 `TURN_NOT_FOUND`.",
)
SINCE = OpenApiParameter(
    "since", int, OpenApiParameter.QUERY, required=False,
    description="Send the events after this seq (a `Last-Event-ID` header wins). Default: "
                "the newest seq saved, so a running turn's events so far come first.",
)


def sse(event: LogEvent) -> bytes:
    data = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


class LiveTurnsActions:
    """Actions of SessionViewSet (which provides `store()` and the space check)."""

    @extend_schema(
        operation_id="listTurns", summary="A session's turns",
        description="The session's turns, newest first (at most 100).", tags=["turns"],
        responses={200: OpenApiResponse(TurnSerializer(many=True), "The turns."),
                   **error_responses(403, 404)},
        parameters=SESSION_PARAMETERS,
    )
    @action(detail=True, methods=["get"])
    async def turns(self, request, space_id: str, session_id: str) -> Response:
        turns = await self.store().list_turns(session_id)  # type: ignore[attr-defined]
        return Response([t.to_json() for t in turns])

    @extend_schema(
        operation_id="getTurn", summary="A turn",
        description="A turn's status (`running`, `completed`, `cancelled`, `failed`), input, "
                    "result and error.", tags=["turns"],
        responses={200: OpenApiResponse(TurnSerializer, "The turn."),
                   **error_responses(403, 404)},
        parameters=[*SESSION_PARAMETERS, TURN_ID],
    )
    @action(detail=True, methods=["get"], url_path=r"turns/(?P<turn_id>[^/]+)")
    async def turn_detail(self, request, space_id: str, session_id: str,
                          turn_id: str) -> Response:
        turn = await self.store().get_turn(session_id, turn_id)  # type: ignore[attr-defined]
        return Response(turn.to_json())

    @extend_schema(
        operation_id="cancelTurn", summary="Cancel a running turn",
        description="Stops the turn wherever it runs (any server process): its LLM call is "
                    "abandoned, nothing of it stays in the history (its user message "
                    "included), the session is free at once and followers get "
                    "`turn.cancelled`; the turn's own request answers 409 `TURN_CANCELLED`. "
                    "A turn that has ended answers 409 `TURN_NOT_RUNNING`; an unknown one "
                    "404 `TURN_NOT_FOUND`. No request body.",
        tags=["turns"], request=None,
        responses={200: OpenApiResponse(CancelledSerializer, "The turn was cancelled."),
                   **error_responses(403, 404, 409)},
        parameters=[*SESSION_PARAMETERS, TURN_ID],
    )
    @action(detail=True, methods=["post"], url_path=r"turns/(?P<turn_id>[^/]+)/cancel")
    async def cancel_turn(self, request, space_id: str, session_id: str,
                          turn_id: str) -> Response:
        agent = await self.aagent()  # type: ignore[attr-defined]
        cancelled = await live.cancel(agent, session_id, turn_id)
        return Response({"turnId": cancelled, "status": "cancelled"})

    @extend_schema(
        operation_id="listApprovals", summary="A turn's tool approvals",
        description="The tool calls of the turn that needed a human's approval, in call "
                    "order, pending or decided.", tags=["turns"],
        responses={200: OpenApiResponse(ApprovalSerializer(many=True), "The approvals."),
                   **error_responses(403, 404)},
        parameters=[*SESSION_PARAMETERS, TURN_ID],
        methods=["GET"],
    )
    @extend_schema(
        operation_id="answerApproval", summary="Approve or deny a tool call",
        description="Answers one tool call of a turn that waits (`status: waiting`, event "
                    "`tool.approval_required`), from any server process. Once every call "
                    "of the round is answered the turn goes on: approved calls run, denied "
                    "ones are not run and the LLM gets the reason as the tool's error. An "
                    "unknown call answers 404 `TOOL_CALL_NOT_FOUND`; a call answered before "
                    "409 `APPROVAL_ANSWERED`; a turn that does not wait 409 "
                    "`TURN_NOT_WAITING`.", tags=["turns"],
        request={JSON: AnswerSerializer},
        responses={200: OpenApiResponse(ApprovalSerializer, "The call, decided."),
                   **error_responses(400, 403, 404, 409, 413)},
        parameters=[*SESSION_PARAMETERS, TURN_ID],
        methods=["POST"],
    )
    @action(detail=True, methods=["get", "post"],
            url_path=r"turns/(?P<turn_id>[^/]+)/approvals")
    async def approvals(self, request, space_id: str, session_id: str,
                        turn_id: str) -> Response:
        if request.method == "GET":
            found = await self.store().list_approvals(session_id, turn_id)  # type: ignore
            return Response([a.to_json() for a in found])
        given = Answer.parse(request.data)
        agent = await self.aagent()  # type: ignore[attr-defined]
        runtime = runtimes.current(one_call=self.one_call_loop)  # type: ignore[attr-defined]
        decided = await approvals.answer(agent, session_id, turn_id, given.call_id,
                                         approve=given.approve, reason=given.reason,
                                         spawn=runtime.spawn)
        return Response(decided.to_json())

    @extend_schema(
        operation_id="sessionEvents", summary="The session's events (SSE)",
        description="Server-Sent Events: every event of the session's log after `since` (or "
                    "the `Last-Event-ID` header), in order, then live; each with `id:` = its "
                    "seq, `event:` = its type and `data:` = its JSON. A comment line is sent "
                    "every STELLO_SSE_HEARTBEAT_SECONDS. Events that are gone (pruned, or not "
                    "read fast enough) give one `gap` event with the session's bootstrap, then "
                    "the stream goes on from the newest seq. A `since` beyond the newest event "
                    "is 400.",
        tags=["turns"],
        responses={(200, "text/event-stream"): OpenApiResponse(
                       SseEventSerializer, "The event stream, one object per event."),
                   **error_responses(400, 403, 404)},
        parameters=[*SESSION_PARAMETERS, SINCE],
    )
    @action(detail=True, methods=["get"],
            renderer_classes=[FastJSONRenderer, EventStreamRenderer])
    async def events(self, request, space_id: str, session_id: str):
        # Errors answer JSON like every route, whatever the Accept header asked for.
        request.accepted_renderer, request.accepted_media_type = (FastJSONRenderer(),
                                                                  "application/json")
        store = self.store()  # type: ignore[attr-defined]
        given = request.headers.get("Last-Event-ID")
        if given is None:
            given = request.query_params.get("since")
        since = live.parse_since(given) if given is not None else None
        follower = live.Follower(store, session_id, since or 0)
        await follower.__aenter__()  # join first, read second
        try:
            newest = await follower.newest()  # SessionNotFound for another space's session
            if since is None:
                follower.position = since = (await store.read_events(session_id, 1 << 62)).current
            elif since > newest:
                raise InvalidInput(f"since is ahead of the session's newest event ({newest})")
        except BaseException:
            await follower.__aexit__(None, None, None)
            raise
        heartbeat = settings.STELLO.get("SSE_HEARTBEAT_SECONDS", 15.0)
        # A loop that lives for this one call (WSGI, the sync test client) cannot hold a
        # stream open: it gets what is logged so far, then the stream ends.
        if getattr(self, "one_call_loop", False):
            try:
                body = [b"retry: 1000\n\n"]
                try:
                    body += [sse(event) for event in await follower.catch_up()]
                except live.Gap:
                    body.append(sse(LogEvent(await follower.newest(), "gap", {"since": since})))
            finally:
                await follower.__aexit__(None, None, None)
            return HttpResponse(b"".join(body), content_type="text/event-stream")

        async def stream() -> AsyncIterator[bytes]:
            events = follower.__aiter__()
            upcoming: asyncio.Future[LogEvent] | None = None
            try:
                yield b"retry: 1000\n\n"
                while True:
                    if upcoming is None:
                        upcoming = asyncio.ensure_future(anext(events))
                    done, _ = await asyncio.wait({upcoming}, timeout=heartbeat)
                    if not done:
                        yield b": heartbeat\n\n"
                        continue
                    event, upcoming = upcoming.result(), None
                    if event.type == "gap":
                        bootstrap = await store.load_bootstrap(session_id)
                        event = LogEvent(event.seq, "gap", {
                            **event.payload, "bootstrap": bootstrap_json(bootstrap)})
                    yield sse(event)
            finally:
                if upcoming is not None:
                    upcoming.cancel()
                await follower.__aexit__(None, None, None)

        response = StreamingHttpResponse(stream(), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies must not hold events back
        return response

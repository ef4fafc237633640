"""`requestId` on `session.message`, `session.stream` and `session.fork`: at most once per user.

The frame's operation runs through `spaces.idempotency.once`, like a REST request with an
`Idempotency-Key` (the same records, locks and expiry; the ids share the user's key space).
What is stored is the operation's last frame (`turn.complete`, `stream.end`, `session.forked`,
or its `error`); the `stream.delta` frames are sent live only. A repeat of the frame (same id,
same session, same payload), on this connection or another, in any process, gets that frame
again with `"replayed": true`, after the first one has finished if it is still running; the
same id with another frame gets an `error` (`IDEMPOTENCY_KEY_REUSED` in its message's place is
not a protocol code, so the code is HANDLER_ERROR and the message says why).

Frames that answer a request with an id carry it back (`"requestId"`), an added field. Errors
that a retry may see change (a busy or archived session, a failing LLM) are not stored, as on
REST.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson

from spaces import idempotency, safejson
from spaces.errors import StelloError

from . import protocol as p

if TYPE_CHECKING:
    from .consumer import SessionConsumer

METHOD = "WS"
# The frames that end an operation: stored and replayed. (Deltas are live only.)
FINAL_TYPES = frozenset({"turn.complete", "stream.end", "session.forked", "error"})


class Capture:
    """The final frame an operation sent, set by the consumer's `reply`. Current only in the
    operation's own task (`capturing`), so a frame the reader sends meanwhile (a refusal of a
    frame beyond the queue) is neither captured nor marked."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.frame: dict[str, Any] | None = None

    def mark(self, message: p.ServerMessage) -> p.ServerMessage:
        if message["type"] not in FINAL_TYPES:
            return message
        marked: Any = {**message, "requestId": self.request_id}
        self.frame = marked
        return marked


capturing: ContextVar[Capture | None] = ContextVar("stello_ws_capture", default=None)


async def run_once(consumer: SessionConsumer, message: Any, text: str,
                   handler: Any) -> None:
    """Run `handler(consumer, message)` once per user and `message["requestId"]`, or replay."""
    request_id = message["requestId"]
    session_id = consumer.session_id
    path = f"ws:{consumer.space_id}/{session_id}:{message['type']}"
    # Same payload whatever the key order or spacing of the frame.
    canonical = orjson.dumps(safejson.loads(text), option=orjson.OPT_SORT_KEYS)
    request = idempotency.Request(consumer.scope["stello"]["user_id"], request_id, METHOD, path,
                                  idempotency.fingerprint(METHOD, path, canonical))

    async def run() -> idempotency.Answer:
        # `once` runs this in a task of its own: the variable is set in that task's context only.
        capture = Capture(request_id)
        capturing.set(capture)
        status = 200
        try:
            await handler(consumer, message)
        except StelloError as exc:
            status = exc.status
            await consumer.reply(p.error(p.HANDLER_ERROR, exc.message))
        frame = capture.frame if capture.frame is not None else p.error(
            p.HANDLER_ERROR, "no answer")
        return idempotency.Answer(status, "application/json", safejson.dumps(frame))

    answer, replayed = await idempotency.once(request, run)
    if replayed:
        await consumer.reply({**orjson.loads(answer.body), "replayed": True})

"""The ASGI `lifespan` protocol: a clean shutdown for servers that send it (uvicorn does; daphne
does not, and there the process simply ends).

On shutdown the server has stopped accepting requests. What is still running finishes: every
WebSocket connection's frame in progress completes and is saved, background memory jobs end,
then the loop-bound resources (the session-lock connection, the async pool, the LLM clients) are
closed, so the database sees clean disconnects instead of dropped sockets.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("stello")


async def shutdown() -> None:
    from ..approvals import stop_waiting
    from ..ws.consumer import operations
    from .pool import runtimes

    stop_waiting()  # a turn waiting for a human must not hold the shutdown up
    await operations.shutdown()
    await runtimes.aclose_current()


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            from .pool import runtimes

            runtimes.current().start()  # the queue worker runs from the first moment
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            except Exception as exc:  # the process ends anyway: say why it was not clean
                logger.exception("unclean shutdown")
                await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.shutdown.complete"})
            return

"""uvicorn's httptools HTTP protocol with a deadline for the request head (slow-loris).

uvicorn times out an idle keep-alive connection (`--timeout-keep-alive`) but not a request
whose head arrives slowly: a client sending a header line now and then holds its connection
forever. Here a request head (request line and headers) must be complete within
STELLO_HTTP_HEADER_TIMEOUT_SECONDS of the connection being opened or of the request's first
byte; otherwise the server answers 408 and closes the connection. Bodies have their own
deadline in the application (`stello_project.asgi`). `stello_project.serve` selects this class
with `--http stello_project.httpserver:HttpToolsProtocol`. It hooks uvicorn's parser callbacks
(`on_message_begin`, `on_headers_complete`); tests/test_limits_servers.py pins the behaviour.

uvicorn also writes a response's head and its body with two `send` calls; here a write is held
until the loop's current step ends, so a head and a body written in the same step (every
non-streamed response) leave in one (`CoalescingTransport`).
"""

from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http import httptools_impl

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stello_project.settings")

_MESSAGE = b"Request head not received in time"
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                   % (len(_MESSAGE), _MESSAGE))


class CoalescingTransport:
    """The connection's transport as one response sees it: writes made in one step of the
    loop are joined and sent at its end (or before a close), in one system call."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if self._held:
            data, self._held = b"".join(self._held), []
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):  # is_closing, get_extra_info, ...
        return getattr(self._transport, name)


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()
        if self.cycle is not None:  # its task has not run yet: nothing was written
            self.cycle.transport = CoalescingTransport(self.transport, self.loop)

    def _arm_head_deadline(self) -> None:
        from django.conf import settings

        self._head_deadline = self.loop.call_later(
            settings.STELLO["HTTP_HEADER_TIMEOUT_SECONDS"], self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # not amid a pipelined response
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

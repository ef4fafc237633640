"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), lighter per frame.

A streamed turn sends one text frame per chunk of the model's reply, so the cost of a frame is
paid hundreds of times per turn. Two changes, for what the server sends:

- A text message goes out as one unfragmented frame built here (RFC 6455 5.2: FIN and the
  text opcode, the payload length, no mask from a server), instead of through websockets'
  `Frame` object and serializer; only while the connection is open and no extension is in use
  (`stello_project.serve` turns per-message deflate off). Anything else (binary data, the
  handshake, a close, pings) takes uvicorn's own way.
- The frames written in one step of the event loop leave in one system call
  (`CoalescingTransport`, as for HTTP responses): a model that sends several chunks at once,
  and a reply's last chunk with the `stream.end` after it, cost one write.

`stello_project.serve` selects it with `--ws stello_project.wsserver:WebSocketProtocol`;
tests/ws/test_ws_server.py checks the frames a real client reads.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from .httpserver import CoalescingTransport

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (UTF-8)."""
    length = len(payload)
    if length < 126:
        return bytes((_FIN_TEXT, length)) + payload
    if length < 1 << 16:
        return bytes((_FIN_TEXT, 126)) + length.to_bytes(2, "big") + payload
    return bytes((_FIN_TEXT, 127)) + length.to_bytes(8, "big") + payload


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        text = message.get("text") if message["type"] == "websocket.send" else None
        if (text is not None and message.get("bytes") is None and self.handshake_complete
                and not self.close_sent and not self.disconnected
                and self.initial_response is None and self.writable.is_set()
                and self.conn.state is State.OPEN and not self.conn.extensions):
            self.transport.write(text_frame(text.encode()))
            return
        await super().send(message)

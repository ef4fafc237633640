"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), lighter per frame.

A streamed turn sends one text frame per chunk of the model's reply, so the cost of a frame is
paid hundreds of times per turn. Here a text message goes out as one unfragmented frame built
in a few operations (RFC 6455 5.2: FIN and the text opcode, the payload length, no mask from a
server) instead of through websockets' `Frame` object, its checks and its serializer (an eighth of
the server's instructions per streamed chunk). Only while the connection is open, writable and
uses no extension (`stello_project.serve` turns per-message deflate off); anything else
(binary data, the handshake, a close, pings) takes uvicorn's own way. Frames are written at
once, as uvicorn does (holding them to the end of the loop's step would save system calls only
when a model sends several chunks at once, and delay every frame under load).

`stello_project.serve` selects it with `--ws stello_project.wsserver:WebSocketProtocol`;
tests/ws/test_ws_server.py checks the frames a real client reads.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

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
    async def send(self, message: Any) -> None:
        text = message.get("text") if message["type"] == "websocket.send" else None
        if (text is not None and message.get("bytes") is None and self.handshake_complete
                and not self.close_sent and not self.disconnected
                and self.initial_response is None and self.writable.is_set()
                and self.conn.state is State.OPEN and not self.conn.extensions):
            self.transport.write(text_frame(text.encode()))
            return
        await super().send(message)

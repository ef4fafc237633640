"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), lighter per frame.

A streamed turn sends one text frame per chunk of the model's reply, so the cost of a frame is
paid hundreds of times per turn. Here a text message goes out as one unfragmented frame built
in a few operations (RFC 6455 5.2: FIN and the text opcode, the payload length, no mask from a
server) instead of through websockets' `Frame` object, its checks and its serializer (an eighth of
the server's instructions per streamed chunk). Only while the connection is open, writable and
uses no extension (`stello_project.serve` turns per-message deflate off); anything else
(binary data, the handshake, a close, pings) takes uvicorn's own way.

A frame goes out at once when none went out earlier in the same step of the event loop; the
frames sent after it in that step (a model's several chunks at once, several server-sent
events of an LLM in one read) are joined and written in one call by a callback the loop runs
next, not one system call each. So the first frame of a burst is never held back, and the rest
wait for nothing but the loop's next round of callbacks. What uvicorn writes in answer to the
client (a pong, the answer to its close) and a close from our side go after the frames held;
uvicorn's keepalive pings may go before them (a control frame may come between messages).

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
    _held: list[bytes] | None = None  # frames sent in this step after its first (None: no burst)

    def _write_held(self) -> None:
        held, self._held = self._held, None
        if held and not self.transport.is_closing():
            self.transport.write(b"".join(held))

    def data_received(self, data: bytes) -> None:
        self._write_held()  # before uvicorn answers a close or a ping
        super().data_received(data)

    def shutdown(self) -> None:
        self._write_held()
        super().shutdown()

    async def send(self, message: Any) -> None:
        text = message.get("text") if message["type"] == "websocket.send" else None
        if (text is not None and message.get("bytes") is None and self.handshake_complete
                and not self.close_sent and not self.disconnected
                and self.initial_response is None and self.writable.is_set()
                and self.conn.state is State.OPEN and not self.conn.extensions):
            frame = text_frame(text.encode())
            if self._held is not None:
                self._held.append(frame)
            else:
                self.transport.write(frame)
                self._held = []
                self.loop.call_soon(self._write_held)
            return
        self._write_held()
        await super().send(message)

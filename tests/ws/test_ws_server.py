"""`stello_project.wsserver`: the frames our uvicorn WebSocket protocol writes itself are the
frames websockets would write, and a real client reads a streamed reply through them whole,
in order, whatever the frame's length class (7-bit, 16-bit and 64-bit payload lengths); frames
sent in one step of the loop take two writes (the first at once), and none is lost or overtaken
by the answer to a client's close."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from stello_project.wsserver import WebSocketProtocol, text_frame
from tests.support.servers import Server, server_env, server_processes


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_a_text_frame_is_the_frame_websockets_writes(length: int) -> None:
    payload = ("é" * length).encode()[:length]  # multi-byte text, cut to the length
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


@pytest.fixture(scope="module")
def uvicorn_server(django_db_setup, tmp_path_factory) -> Iterator[Server]:
    env = server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0")
    with server_processes([env], tmp_path_factory.mktemp("wsserver"),
                          asgi_server="uvicorn") as (started,):
        yield started


@pytest.mark.servers
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
async def test_a_streamed_reply_reaches_a_real_client_whole_and_in_order(
        uvicorn_server, space_id, root_id, alice_key) -> None:
    # The offline model echoes the input word by word: chunks of every length class.
    words = ["short", "x" * 200, "y" * 70_000, *(f"w{n}" for n in range(300)), "z" * 130]
    text = " ".join(words)
    async with connect(uvicorn_server.ws(space_id), additional_headers={"X-API-Key": alice_key},
                       open_timeout=10, max_size=2**22, proxy=None) as ws:
        async with asyncio.timeout(30):
            await ws.send(json.dumps({"type": "session.enter", "sessionId": root_id}))
            assert json.loads(await ws.recv())["type"] == "session.entered"
            for _ in range(2):  # the socket goes on after a stream
                await ws.send(json.dumps({"type": "session.stream", "input": text}))
                chunks = []
                while (frame := json.loads(await ws.recv()))["type"] == "stream.delta":
                    chunks.append(frame["chunk"])
                assert frame["type"] == "stream.end", frame
                reply = frame["result"]["turn"]["finalContent"]
                assert "".join(chunks) == reply == f"echo: {text}"
                assert len(chunks) == len(words) + 1
                assert max(map(len, chunks)) > 65_535


# -- frames sent in one step of the loop: the first at once, the rest in one write -----------


class RecordingTransport(asyncio.Transport):
    """What the protocol writes, call by call (the kernel's side of a socket is not the point)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default)


def _server_and_client(app: Any) -> tuple[WebSocketProtocol, RecordingTransport, ClientProtocol]:
    config = uvicorn.Config(app=app, ws=WebSocketProtocol, ws_per_message_deflate=False,
                            lifespan="off", log_level="warning")
    config.load()
    server = WebSocketProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    server.connection_made(transport)
    client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/"))
    client.send_request(client.connect())
    server.data_received(b"".join(client.data_to_send()))
    return server, transport, client


def _texts(client: ClientProtocol, data: bytes) -> list[str]:
    client.receive_data(data)
    return [e.data.decode() for e in client.events_received()
            if isinstance(e, Frame) and e.opcode is Opcode.TEXT]


async def _handshake(client: ClientProtocol, transport: RecordingTransport) -> int:
    """The server's handshake answer read by the client; how many writes it took."""
    await _steps()
    client.receive_data(b"".join(transport.writes))
    client.events_received()
    return len(transport.writes)


async def _steps(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_frames_sent_in_one_step_go_out_first_at_once_then_the_rest_together() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await receive()
        for chunk in ("one", "two", "three"):  # one step: no await suspends in between
            await send({"type": "websocket.send", "text": chunk})
        await receive()
        await send({"type": "websocket.send", "text": "alone"})
        await receive()

    server, transport, client = _server_and_client(app)
    handshake = await _handshake(client, transport)
    client.send_text(b"go")
    server.data_received(b"".join(client.data_to_send()))
    await _steps()
    frames = transport.writes[handshake:]
    assert len(frames) == 2  # "one" at once, "two" + "three" in one write
    assert _texts(client, b"".join(frames)) == ["one", "two", "three"]

    client.send_text(b"again")
    server.data_received(b"".join(client.data_to_send()))
    await _steps()
    assert len(transport.writes) == handshake + 3  # a frame alone is one write
    assert _texts(client, transport.writes[-1]) == ["alone"]
    server.connection_lost(None)
    await _steps()


async def test_held_frames_go_out_before_the_answer_to_a_close_from_the_client() -> None:
    sent = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        sent.set()  # (wakes the test after this step, before the held frames' write)
        await send({"type": "websocket.send", "text": "first"})
        await send({"type": "websocket.send", "text": "held"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    server, transport, client = _server_and_client(app)
    handshake = await _handshake(client, transport)
    client.send_text(b"go")
    server.data_received(b"".join(client.data_to_send()))
    await sent.wait()
    assert _texts(client, b"".join(transport.writes[handshake:])) == ["first"]  # "held" waits
    client.send_close(1000)
    server.data_received(b"".join(client.data_to_send()))  # the close, in the same step
    client.receive_data(b"".join(transport.writes[-2:]))
    kinds = [(e.opcode, e.data) for e in client.events_received() if isinstance(e, Frame)]
    assert kinds[0] == (Opcode.TEXT, b"held")  # before the close frame, not dropped
    assert kinds[1][0] is Opcode.CLOSE
    server.connection_lost(None)
    await _steps()

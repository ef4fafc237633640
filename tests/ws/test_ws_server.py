"""`stello_project.wsserver`: the frames our uvicorn WebSocket protocol writes itself are the
frames websockets would write, and a real client reads a streamed reply through them whole,
in order, whatever the frame's length class (7-bit, 16-bit and 64-bit payload lengths)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from stello_project.wsserver import text_frame
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

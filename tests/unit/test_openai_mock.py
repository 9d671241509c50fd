"""The instant OpenAI mock of the overhead benchmark, served in-process on a free port.

A chat completion echoes the last user message with `usage`; a body that is not JSON, or
not a chat request, is a 400 in OpenAI's error shape; requests on one connection are
answered in order even when their bytes arrive in pieces.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from loadtest.openai_mock import MODEL, start

CHAT = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "hello mock"},
    ],
}


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server, bound = await start("127.0.0.1", 0)
    yield bound
    server.close()
    await server.wait_closed()


def _request(method: str, path: str, body: bytes = b"", close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n"
    return (head + ("connection: close\r\n" if close else "") + "\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    assert headers["content-type"] == "application/json"
    return status, json.loads(await reader.readexactly(int(headers["content-length"])))


async def _exchange(port: int, *pieces: bytes, answers: int = 1) -> list[tuple[int, dict]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        return [await asyncio.wait_for(_answer(reader), 5) for _ in range(answers)]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_chat_completion_echoes_the_last_user_message(port):
    [(status, body)] = await _exchange(
        port, _request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    )
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello mock"},
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe", b'{"model": "m"}', b"[]"])
async def test_a_bad_body_is_a_400(port, payload):
    [(status, body)] = await _exchange(port, _request("POST", "/v1/chat/completions", payload))
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


async def test_requests_on_one_connection_in_pieces_are_answered_in_order(port):
    chat = _request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    stream = chat + _request("GET", "/v1/models") + _request("GET", "/nowhere", close=True)
    answers = await _exchange(port, stream[:10], stream[10:-30], stream[-30:], answers=3)
    assert [status for status, _ in answers] == [200, 200, 404]
    assert answers[0][1]["id"] != ""
    assert answers[1][1]["data"][0]["id"] == MODEL


async def test_a_stream_sends_a_word_a_chunk_its_interval_apart_then_the_next_answer():
    """Server-sent events in a chunked body; a request pipelined behind the stream is
    answered after its end."""
    server, port = await start("127.0.0.1", 0, interval_s=0.02)
    try:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        pieces = _request("POST", "/v1/chat/completions", json.dumps(body).encode())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(pieces + _request("GET", "/v1/models"))
        assert (await reader.readline()).split()[1] == b"200"
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        assert "content-type: text/event-stream" in head and "transfer-encoding: chunked" in head
        raw = b""
        while size := int((await reader.readline()).strip(), 16):
            raw += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()  # the last chunk's CRLF
        elapsed = loop.time() - started
        events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "hello mock"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["usage"]["completion_tokens"] == 2
        assert elapsed >= 0.02  # the two words one interval apart
        status, models = await asyncio.wait_for(_answer(reader), 5)
        assert status == 200 and models["data"][0]["id"] == MODEL
        writer.close()
    finally:
        server.close()
        await server.wait_closed()

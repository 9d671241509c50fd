"""An instant OpenAI-compatible server: the upstream of the gateway overhead benchmark.

    python -m loadtest.openai_mock --port 8099

`POST /v1/chat/completions` answers at once with a chat completion that echoes the last
user message, with `usage`; with `"stream": true`, as server-sent events, one
`chat.completion.chunk` a word of it, the words `--chunk-interval-ms` apart (0: all at
once), the finish chunk (and the usage chunk, under `stream_options.include_usage`) and
`data: [DONE]` with the last word, as a model server sends them.
`GET /v1/models` lists the one model. It is the baseline that a gateway's overhead is
measured against, so it does the least work Python can: a raw asyncio protocol on uvloop,
HTTP/1.1 keep-alive, bodies framed by Content-Length only (a chunked request gets 411),
JSON with the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from typing import cast

import uvloop

MODEL = "mock-gpt"
MAX_HEAD_BYTES = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS |= {411: "Length Required", 431: "Request Header Fields Too Large"}
_MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "mock"}]}
).encode()


class BadRequest(ValueError):
    """A body that is not a chat completion request: HTTP 400."""


def completion(request: object, number: int) -> dict[str, object]:
    """The chat completion that answers `request` (a parsed JSON body)."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise BadRequest("'messages' must be a list")
    messages = [m for m in request["messages"] if isinstance(m, dict)]
    users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
    text = users[-1] if users else ""
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    completion_tokens = len(text.split())
    return {
        "id": f"chatcmpl-mock-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model", MODEL)),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chunks(request: dict[str, object], answer: dict[str, object]) -> list[bytes]:
    """The server-sent events of `answer` streamed, as a model server sends them: each piece
    of text a word (the role with the first, the finish reason, the usage chunk when
    `stream_options.include_usage`, and `[DONE]` with the last), one piece an element."""
    choice = cast(list[dict[str, object]], answer["choices"])[0]
    text = str(cast(dict[str, object], choice["message"])["content"])
    head = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def event(delta: dict[str, object], finish: str | None = None) -> bytes:
        body = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    words = text.split(" ")
    pieces = [event({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    pieces[0] = event({"role": "assistant", "content": ""}) + pieces[0]
    pieces[-1] += event({}, "stop")
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        usage = head | {"choices": [], "usage": answer["usage"]}
        pieces[-1] += b"data: " + json.dumps(usage).encode() + b"\n\n"
    pieces[-1] += b"data: [DONE]\n\n"
    return pieces


def _error(message: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return json.dumps({"error": error}).encode()


def route(method: str, path: str, body: bytes, number: int) -> tuple[int, bytes | list[bytes]]:
    """(status, JSON payload) for one request; a stream's payload is its events."""
    if path == "/v1/chat/completions":
        if method != "POST":
            return 405, _error("use POST")
        try:
            request = json.loads(body)
            answer = completion(request, number)
        except ValueError as exc:  # BadRequest, JSONDecodeError, UnicodeDecodeError
            return 400, _error(f"invalid request body: {exc}")
        if request.get("stream"):
            return 200, chunks(request, answer)
        return 200, json.dumps(answer).encode()
    if path == "/v1/models" and method == "GET":
        return 200, _MODELS
    return 404, _error(f"no route {method} {path}")


def _response(status: int, payload: bytes, close: bool) -> bytes:
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(payload)}\r\n"
    head += "connection: close\r\n\r\n" if close else "\r\n"
    return head.encode("latin-1") + payload


def _stream_head(close: bool) -> bytes:
    head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    head += "transfer-encoding: chunked\r\n"
    head += "connection: close\r\n\r\n" if close else "\r\n"
    return head.encode("latin-1")


def _chunk(data: bytes) -> bytes:
    """One piece of a chunked HTTP/1.1 body (b"" ends it)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as their bytes arrive and answers each in
    order (pipelined requests included): at once, or a stream's events `interval_s` apart,
    the next request waiting for the stream's end."""

    def __init__(self, numbers: itertools.count[int], interval_s: float) -> None:
        self._numbers = numbers
        self._interval_s = interval_s
        self._buffer = bytearray()
        self._continued = False
        self._streaming = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._answer()

    def _answer(self) -> None:
        while self._transport is not None and not self._streaming:
            answer = self._next()
            if answer is None:
                return
            status, payload, close = answer
            if isinstance(payload, list):
                self._transport.write(_stream_head(close))
                self._streaming = True
                self._send(payload, close)
                continue
            self._transport.write(_response(status, payload, close))
            if close:
                self._transport.close()
                return

    def _send(self, events: list[bytes], close: bool) -> None:
        """Writes the stream's next event, and schedules the one after it."""
        if self._transport is None:
            return
        if not events:
            self._transport.write(_chunk(b""))
            self._streaming = False
            if close:
                self._transport.close()
                return
            self._answer()
            return
        self._transport.write(_chunk(events[0]))
        rest = events[1:]
        if self._interval_s and rest:
            asyncio.get_running_loop().call_later(self._interval_s, self._send, rest, close)
        else:
            self._send(rest, close)

    def _next(self) -> tuple[int, bytes | list[bytes], bool] | None:
        """The next complete request's answer, or None until more bytes arrive."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            too_long = len(self._buffer) > MAX_HEAD_BYTES
            return (431, _error("request head too large"), True) if too_long else None
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers = dict(_header(line) for line in lines[1:])
        if len(parts) != 3 or not headers.get("content-length", "0").isdigit():
            return 400, _error("malformed request head"), True
        if "transfer-encoding" in headers:
            return 411, _error("send a content-length"), True
        size = end + 4 + int(headers.get("content-length", "0"))
        if len(self._buffer) < size:
            if headers.get("expect", "").lower() == "100-continue" and not self._continued:
                self._continued = True
                assert self._transport is not None
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(self._buffer[end + 4 : size])
        del self._buffer[:size]
        self._continued = False
        method, target, version = parts
        close = version != "HTTP/1.1" or headers.get("connection", "").lower() == "close"
        return (*route(method, target.split("?", 1)[0], body, next(self._numbers)), close)


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


async def start(
    host: str = "127.0.0.1", port: int = 0, interval_s: float = 0.0
) -> tuple[asyncio.Server, int]:
    """The listening server and its bound port (`port` 0 picks a free one); a stream's
    events go `interval_s` apart."""
    numbers = itertools.count(1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(numbers, interval_s), host, port, backlog=1024
    )
    return server, int(server.sockets[0].getsockname()[1])


async def _serve(host: str, port: int, interval_s: float) -> None:
    server, bound = await start(host, port, interval_s)
    print(f"openai mock on http://{host}:{bound}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.openai_mock")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunk-interval-ms", type=float, default=0.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(args.host, args.port, args.chunk_interval_ms / 1000))


if __name__ == "__main__":
    main()

"""An instant OpenAI-compatible server: the upstream of the gateway overhead benchmark.

    python -m loadtest.openai_mock --port 8099

`POST /v1/chat/completions` answers at once with a non-streaming chat completion that
echoes the last user message, with `usage`; `GET /v1/models` lists the one model. It is
the baseline that a gateway's overhead is measured against, so it does the least work
Python can: a raw asyncio protocol on uvloop, HTTP/1.1 keep-alive, bodies framed by
Content-Length only (a chunked request gets 411), JSON with the standard library.
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


def _error(message: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return json.dumps({"error": error}).encode()


def route(method: str, path: str, body: bytes, number: int) -> tuple[int, bytes]:
    """(status, JSON payload) for one request."""
    if path == "/v1/chat/completions":
        if method != "POST":
            return 405, _error("use POST")
        try:
            return 200, json.dumps(completion(json.loads(body), number)).encode()
        except ValueError as exc:  # BadRequest, JSONDecodeError, UnicodeDecodeError
            return 400, _error(f"invalid request body: {exc}")
    if path == "/v1/models" and method == "GET":
        return 200, _MODELS
    return 404, _error(f"no route {method} {path}")


def _response(status: int, payload: bytes, close: bool) -> bytes:
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(payload)}\r\n"
    head += "connection: close\r\n\r\n" if close else "\r\n"
    return head.encode("latin-1") + payload


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as their bytes arrive and answers each at
    once, in order (pipelined requests included)."""

    def __init__(self, numbers: itertools.count[int]) -> None:
        self._numbers = numbers
        self._buffer = bytearray()
        self._continued = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while (answer := self._next()) is not None:
            status, payload, close = answer
            self._transport.write(_response(status, payload, close))
            if close:
                self._transport.close()
                return

    def _next(self) -> tuple[int, bytes, bool] | None:
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


async def start(host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, int]:
    """The listening server and its bound port (`port` 0 picks a free one)."""
    numbers = itertools.count(1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(numbers), host, port, backlog=1024)
    return server, int(server.sockets[0].getsockname()[1])


async def _serve(host: str, port: int) -> None:
    server, bound = await start(host, port)
    print(f"openai mock on http://{host}:{bound}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.openai_mock")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()

"""The OpenAI-compatible API: OpenAI's JSON in, the gateway's own calls, OpenAI's JSON out.

    POST /v1/chat/completions   RAG over the tenant's corpus (plain chat: `skip_retrieval`)
    POST /v1/embeddings         the embedder retrieval searches with
    GET  /v1/models             what the key may use

HTTP/1.1 on `gateway.openai_port`, served by aiohttp in the gateway's own event loop, behind
the edge (services/edge/render.py routes these paths here). It is a second face of the same
calls as the gRPC servicer: each request becomes the native request's values
(GenerateParams, the Call of the same key and budget), so admission, routing, caches,
degradation, failover before the first token and telemetry are the native path's. The
gRPC API stays the contract: every field here has a native field of the same meaning.

Mapping (docs/openai.md has the table):
- `model`: a tier name, or "auto" for the routing policy's choice; the answer's `model` is
  the tier that answered.
- `messages`: the last one is the question and must be the user's; the turns before it are
  the conversation (system and developer turns are "system").
- `max_completion_tokens` (or the older `max_tokens`), `temperature` (default 0, the
  native default, not OpenAI's 1: answers are greedy and cacheable unless asked otherwise),
  `top_p`, `stop`, `seed`, `user`; `stream` with `stream_options.include_usage`.
- ragmesh's own fields, sent as the SDK's `extra_body`: `top_k`, `filters`,
  `skip_retrieval`, `bypass_cache`, `priority`, `model_version`.
- The answer carries `citations` (the native Citation: index, document_id, chunk_id, score,
  snippet, page, heading) and `ragmesh` (tier, region, cache status, degradation, routing,
  trace id, corpus version, cost), top-level fields the SDK keeps (`completion.model_extra`); a
  stream carries them on the chunk with `finish_reason`.

Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the HTTP
status of the native error's gRPC code (services.common.errors.HTTP_STATUS): 400, 401,
403, 404, 429 with Retry-After, 500, 503, 504. A stream sends its status with the first
event, so a failure before the first token is a plain error response (and the edge may try
another region); one after it is an `error` event, and the stream ends without `[DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import grpc
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common import metrics, telemetry
from services.common.errors import (
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    RagmeshError,
    http_status,
)
from services.contract.prompt import Turn
from services.gateway.core import GatewayCore
from services.gateway.plan import MAX_TURNS
from services.gateway.servicer import GatewayServicer
from services.gateway.values import Answer, Call, GenerateParams

LOGGER = logging.getLogger(__name__)
_TRACER = trace.get_tracer("ragmesh.gateway")
AUTO_MODEL = "auto"  # the routing policy picks the tier
# Parameters OpenAI defines that this API does not implement: accepted at the value that
# asks for nothing (what many clients send by default), refused otherwise, naming them.
NEUTRAL: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (False, True),
    "store": (False,),
    "metadata": ({},),
}
# OpenAI's error type and code for each status the gateway ends a call with.
_ERROR_KIND: dict[grpc.StatusCode, tuple[str, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_request_error", "invalid_request"),
    grpc.StatusCode.FAILED_PRECONDITION: ("invalid_request_error", "failed_precondition"),
    grpc.StatusCode.UNAUTHENTICATED: ("authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: ("not_found_error", "not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: ("server_error", "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("server_error", "deadline_exceeded"),
    grpc.StatusCode.ABORTED: ("server_error", "aborted"),
}
_FINISH = {"stop": "stop", "length": "length"}
_HISTORY = re.compile(r"history\[(\d+)\](.*)")
_STATUS = "ragmesh.status"  # the request's key for a stream's own ending status


class _Strict(BaseModel):
    # Strict: "yes" is no boolean, 7.5 no seed (an int is a float, as JSON has it).
    model_config = ConfigDict(extra="forbid", strict=True)


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class _Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None
    name: str | None = None
    # What an assistant message carries when a client sends one back as it got it
    # (message.model_dump()): taken and left aside; tool calls only when there are none.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None
    tool_calls: Annotated[list[Any], Field(max_length=0)] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class _StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool = False  # accepted; no padding is sent


class _JsonSchema(_Strict):
    name: str
    description: str | None = None
    schema_: Annotated[dict[str, Any], Field(alias="schema")]
    strict: bool | None = None  # the schema is always enforced: the answer is checked


class _ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None

    def native(self) -> dict[str, Any] | None:
        """The native request's json_schema: None for text, any object for json_object."""
        if self.type == "json_schema":
            if self.json_schema is None:
                raise InvalidArgument(
                    "response_format.json_schema: required when type is json_schema",
                    field="response_format.json_schema",
                )
            return self.json_schema.schema_
        return {"type": "object"} if self.type == "json_object" else None


class ChatRequest(_Strict):
    """POST /v1/chat/completions: OpenAI's fields this API implements, then ragmesh's."""

    model_config = ConfigDict(extra="allow", strict=True)  # NEUTRAL's are checked apart
    model: str
    messages: Annotated[list[_Message], Field(min_length=1)]
    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    response_format: _ResponseFormat | None = None
    # null is each field's default, as in OpenAI's API.
    top_k: int | None = None
    filters: dict[str, str] | None = None
    skip_retrieval: bool | None = None
    bypass_cache: bool | None = None
    priority: str | None = None
    model_version: str | None = None


class EmbeddingsRequest(_Strict):
    """POST /v1/embeddings."""

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def _invalid(exc: ValidationError) -> InvalidArgument:
    """The most specific violation (the deepest; within a union, the branch that went
    furthest), naming its field as OpenAI does (`messages[1].content[0].type`)."""
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    path = ""
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in {"str", "list[_TextPart]", "list[str]"}:  # a union's branch name
            path += f".{part}" if path else str(part)
    why = error["msg"].lower() if error["type"] != "extra_forbidden" else "unknown field"
    return InvalidArgument(f"{path}: {why}", field=path)


def _body(raw: bytes, model: type[BaseModel]) -> Any:
    try:
        data = json.loads(raw)
        if b"\\u" in raw:  # an escaped lone surrogate parses, but is no text
            json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            "body: a lone surrogate (\\ud800-\\udfff) is no text", field="body"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgument("body: not UTF-8 text", field="body") from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"body: not JSON: {str(exc)[:200]}", field="body") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("body: must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def _params(request: ChatRequest, tiers: Iterable[str], priority: str = "") -> GenerateParams:
    """The native request's values (`priority`: the x-priority header's, which the body's
    field overrides); InvalidArgument or NotFound naming the field."""
    for name, value in (request.model_extra or {}).items():
        if name not in NEUTRAL:
            raise InvalidArgument(f"{name}: unknown field", field=name)
        if value is not None and value not in NEUTRAL[name]:
            raise InvalidArgument(f"{name}: not supported; send {NEUTRAL[name][0]!r}", field=name)
    if request.model != AUTO_MODEL and request.model not in tiers:
        raise NotFound(
            f"model: {request.model[:64]!r} does not exist; GET /v1/models lists them",
            field="model",
        )
    for name in ("max_completion_tokens", "max_tokens"):
        if getattr(request, name) is not None and getattr(request, name) < 1:
            raise InvalidArgument(f"{name}: must be >= 1", field=name)
    if request.stream_options is not None and not request.stream:
        raise InvalidArgument("stream_options: only with stream true", field="stream_options")
    *earlier, last = request.messages
    if last.role != "user":
        raise InvalidArgument(
            f"messages[{len(earlier)}].role: the last message must be the user's question",
            field=f"messages[{len(earlier)}].role",
        )
    # Empty turns (an aborted reply, an empty system prompt) say nothing: left out, as are
    # turns past MAX_TURNS, oldest first (the prompt would drop them first anyway).
    history = tuple(
        Turn("system" if m.role == "developer" else m.role, m.text())
        for m in earlier
        if m.text().strip()
    )[-MAX_TURNS:]
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    return GenerateParams(
        query=last.text(),
        history=history,
        tier="" if request.model == AUTO_MODEL else request.model,
        max_tokens=request.max_completion_tokens or request.max_tokens or 0,
        temperature=0.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=stop,
        seed=request.seed,
        user=request.user or "",
        top_k=request.top_k or 0,
        filters=request.filters or {},
        skip_retrieval=bool(request.skip_retrieval),
        bypass_cache=bool(request.bypass_cache),
        priority=(request.priority or priority).strip(),
        model_version=request.model_version or "",
        json_schema=request.response_format.native() if request.response_format else None,
    )


def _in_openai_terms(error: RagmeshError, request: ChatRequest) -> RagmeshError:
    """`error` naming the request's own field (`messages[3].content`, `model`) where it
    names a native one (`query`, `history[i]...`, `tier`)."""
    field = error.field
    if field == "query":
        field = f"messages[{len(request.messages) - 1}].content"
    elif field == "tier":
        field = "model"
    elif field == "json_schema":
        field = "response_format.json_schema.schema"
    elif (turn := _HISTORY.match(field)) is not None:
        # history[j] is the j-th kept turn: empty ones and those past MAX_TURNS are left out
        *earlier, _ = request.messages
        kept = [i for i, m in enumerate(earlier) if m.text().strip()][-MAX_TURNS:]
        j = int(turn.group(1))
        field = f"messages[{kept[j]}]{turn.group(2)}" if j < len(kept) else "messages"
    if field == error.field:
        return error
    error.message = f"{field}:{error.message.partition(':')[2]}"
    error.field = field
    return error


def error_body(error: RagmeshError) -> dict[str, Any]:
    kind, code = _ERROR_KIND.get(error.code, ("server_error", "internal_error"))  # INTERNAL
    if isinstance(error, NotFound) and error.field == "model":
        code = "model_not_found"
    elif error.reason:  # a guardrail's: prompt_injection, output_schema_violation
        code = error.reason.lower()
    return {
        "error": {
            "message": error.message,
            "type": kind,
            "param": error.field or None,
            "code": code,
        }
    }


def error_response(error: RagmeshError) -> web.Response:
    headers = {"Retry-After": error.retry_after} if isinstance(error, QuotaExceeded) else None
    return web.json_response(error_body(error), status=http_status(error.code), headers=headers)


def _extension(answer: Answer, call: Call, region: str) -> dict[str, Any]:
    return {
        "citations": [
            {
                "index": c.index,
                "document_id": c.document_id,
                "chunk_id": c.chunk_id,
                "score": c.score,
                "snippet": c.snippet,
                "page": c.page,
                "heading": c.heading,
            }
            for c in answer.citations
        ],
        "ragmesh": {
            "tier": answer.tier,
            "model": answer.model,
            "region": region,
            "cache_status": answer.cache_status,
            "degraded": answer.degraded,
            "degraded_reason": answer.degraded_reason,
            "routing": {
                "tier": answer.routing.tier,
                "reason": answer.routing.reason,
                "detail": answer.routing.detail,
            }
            if answer.routing
            else None,
            "trace_id": call.trace_id,
            "cache_match": dataclasses.asdict(answer.cache_match) if answer.cache_match else None,
            "corpus_version": answer.corpus_version,
            "cost_usd": answer.cost_usd,
            "guardrails": [dataclasses.asdict(g) for g in answer.guardrails],
            "continuations": [dataclasses.asdict(c) for c in answer.continuations],
        },
    }


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class OpenAIApi:
    """The aiohttp application over `core`, sharing `servicer`'s keys, budgets and drain."""

    def __init__(
        self,
        core: GatewayCore,
        servicer: GatewayServicer,
        ratio: float,
        reuse_port: bool = False,
        unix_socket: Path | None = None,
    ) -> None:
        self._core = core
        self._reuse_port = reuse_port  # other workers bind the port too (SO_REUSEPORT)
        self._unix_socket = unix_socket  # its own, for Envoy (config/gateway.py worker_sockets)
        self._servicer = servicer
        self._ratio = ratio  # traces sampled where the caller has not decided
        self.serving = True  # GET /health: 503 once draining, so the edge sends no more
        self.app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[_aiohttp_errors])
        self.app.router.add_post("/v1/chat/completions", self._timed("ChatCompletions", self.chat))
        self.app.router.add_post("/v1/embeddings", self._timed("Embeddings", self.embeddings))
        self.app.router.add_get("/v1/models", self._timed("ListModels", self.models))
        self.app.router.add_get("/v1/models/{model}", self._timed("GetModel", self.model))
        self.app.router.add_get("/health", self.health)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        """Serves on `host`:`port` (0: any free port); returns the port."""
        # A client that goes away cancels its handler: its generation stops at once.
        # The drain (close_streams) has waited for calls in flight by the time it stops.
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=self._reuse_port or None)
        await site.start()
        if self._unix_socket is not None:
            await web.UnixSite(self._runner, str(self._unix_socket)).start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._unix_socket is not None:  # aiohttp leaves the file; gRPC removes its own
            self._unix_socket.unlink(missing_ok=True)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.serving else 503, text="")

    def _timed(
        self, method: str, handler: Callable[[web.Request, Call], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """`handler` in its trace, timed in REQUEST_SECONDS like a gRPC call (the status
        the caller gets, by gRPC name), its errors in OpenAI's shape."""
        observe = metrics.timer("gateway", method)

        async def serve(request: web.Request) -> web.StreamResponse:
            headers = [(k.lower(), v) for k, v in request.headers.items()]
            started, code = time.perf_counter(), "OK"
            with self._trace(request, headers) as span:
                try:
                    with self._servicer.in_flight():  # the drain waits for it
                        call = self._servicer.call(headers, _expected_timeout(request))
                        response = await handler(request, call)
                    code = request.get(_STATUS, code)
                    return response
                except web.HTTPException as exc:  # aiohttp's own (a body over the limit)
                    code = "INVALID_ARGUMENT" if exc.status < 500 else "INTERNAL"
                    raise
                except RagmeshError as error:
                    code = error.code.name
                    response = error_response(error)
                    span.set_attribute("http.response.status_code", response.status)
                    span.set_status(trace.StatusCode.ERROR, error.message)
                    return response
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except Exception:
                    LOGGER.exception("unhandled error in %s", method)
                    code = "INTERNAL"
                    return error_response(RagmeshError("internal error"))
                finally:
                    observe(code, time.perf_counter() - started)

        return serve

    @contextlib.contextmanager
    def _trace(self, request: web.Request, headers: list[tuple[str, str]]) -> Iterator[trace.Span]:
        """A server span (OpenTelemetry's HTTP names) for a sampled request; an unsampled
        one runs in its trace's context (its trace id names it), as gRPC calls do
        (services/common/interceptor.py). Yields the span (a non-recording one unsampled)."""
        if not telemetry.sampled(headers, self._ratio):
            token = otel_context.attach(telemetry.unsampled(headers))
            try:
                yield trace.get_current_span()
            finally:
                otel_context.detach(token)
            return
        with _TRACER.start_as_current_span(
            f"{request.method} {request.path}",
            context=propagate.extract(dict(headers)),
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": request.path,
                "url.path": request.path,
            },
        ) as span:
            yield span

    def _model_names(self, call: Call) -> list[str]:
        """The tiers the key's tenant may use (every tier without a policy), "auto", and the
        embedder."""
        names = [*self._core.planner.allowed_tiers(call.tenant), AUTO_MODEL]
        return [*names, self._core.config.embedding_model]

    async def models(self, request: web.Request, call: Call) -> web.Response:
        data = [_model(name) for name in self._model_names(call)]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request, call: Call) -> web.Response:
        """GET /v1/models/{model}: one of models(), else 404 model_not_found."""
        name = request.match_info["model"]
        if name not in self._model_names(call):
            raise NotFound(f"model: {name[:64]!r} does not exist", field="model")
        return web.json_response(_model(name))

    async def embeddings(self, request: web.Request, call: Call) -> web.Response:
        body: EmbeddingsRequest = _body(await _read(request), EmbeddingsRequest)
        if body.model != self._core.config.embedding_model:
            raise NotFound(
                f"model: {body.model[:64]!r} is no embedding model here; use "
                f"{self._core.config.embedding_model!r}",
                field="model",
            )
        size = self._core.config.embedding_dimensions
        if body.dimensions is not None and body.dimensions != size:
            raise InvalidArgument(f"dimensions: this model has {size} only", field="dimensions")
        texts = [body.input] if isinstance(body.input, str) else body.input
        embedded = await self._core.embed(call, texts)
        rows: list[Any] = (
            [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in embedded.vectors]
            if body.encoding_format == "base64"
            else embedded.vectors.tolist()
        )
        used = sum(embedded.tokens)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": row}
                    for i, row in enumerate(rows)
                ],
                "model": body.model,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        )

    async def chat(self, request: web.Request, call: Call) -> web.StreamResponse:
        body: ChatRequest = _body(await _read(request), ChatRequest)
        try:
            return await self._chat(request, call, body)
        except RagmeshError as error:
            raise _in_openai_terms(error, body) from None

    async def _chat(
        self, request: web.Request, call: Call, body: ChatRequest
    ) -> web.StreamResponse:
        header = request.headers.get("x-priority", "")
        params = _params(body, self._core.planner.tier_names(), header)
        region = self._core.config.region
        created = int(time.time())
        completion_id = f"chatcmpl-{call.trace_id}"
        if not body.stream:
            answer = await self._answer(call, params)
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": answer.tier,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer.text},
                            "logprobs": None,
                            "finish_reason": _FINISH.get(answer.finish_reason, "stop"),
                        }
                    ],
                    "usage": _usage(answer),
                    **_extension(answer, call, region),
                }
            )
        usage = body.stream_options is not None and body.stream_options.include_usage
        return await self._stream(request, call, params, completion_id, created, usage)

    async def _answer(self, call: Call, params: GenerateParams) -> Answer:
        async with contextlib.aclosing(self._core.generate(call, params, stream=False)) as events:
            async for event in events:
                if isinstance(event, Answer):
                    return event
        raise RuntimeError("generation ended without an answer")

    async def _stream(
        self,
        request: web.Request,
        call: Call,
        params: GenerateParams,
        completion_id: str,
        created: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        """Server-sent events: a chunk per piece of text, the chunk with finish_reason (and
        the citations), the usage chunk if asked, then [DONE]. The response starts with the
        first event: an error before it is a plain error response."""
        events = self._servicer.streamed(self._core.generate(call, params))
        response: web.StreamResponse | None = None
        model = params.tier or AUTO_MODEL

        def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }
            if include_usage:
                body.setdefault("usage", None)
            return body

        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if response is None:
                        response = await _open_stream(request)
                        await response.write(
                            _sse(chunk({"role": "assistant", "content": ""}, None))
                        )
                    if isinstance(event, Answer):
                        model = event.tier
                        finish = _FINISH.get(event.finish_reason, "stop")
                        extension = _extension(event, call, self._core.config.region)
                        await response.write(_sse(chunk({}, finish, **extension)))
                        if include_usage:
                            last = chunk({}, None, usage=_usage(event))
                            last["choices"] = []
                            await response.write(_sse(last))
                        await response.write(_sse("[DONE]"))
                    else:
                        await response.write(_sse(chunk({"content": event}, None)))
        except RagmeshError as error:
            if response is None:
                raise
            await response.write(_sse(error_body(error)))  # and no [DONE]: never a clean end
            request[_STATUS] = error.code.name
        except ConnectionError:  # the client went away mid-stream: nothing more to say
            if response is None:
                raise
            request[_STATUS] = "CANCELLED"
            return response
        except Exception:
            if response is None:
                raise
            LOGGER.exception("unhandled error in a chat completions stream")
            await response.write(_sse(error_body(RagmeshError("internal error"))))
            request[_STATUS] = "INTERNAL"
        assert response is not None
        await response.write_eof()
        return response


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ragmesh"}


async def _read(request: web.Request) -> bytes:
    """The request's body, decoded as its Content-Encoding says; InvalidArgument naming
    `body` when it cannot be (a body that is not the gzip it claims to be)."""
    try:
        return await request.read()
    except web.HTTPException:
        raise  # aiohttp's own answer (a body over the limit): _aiohttp_errors shapes it
    except Exception as exc:
        raise InvalidArgument(
            f"body: cannot be read as its Content-Encoding says: {type(exc).__name__}",
            field="body",
        ) from exc


@web.middleware
async def _aiohttp_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, a method the path does not take, a body over
    the limit, an encoding it cannot decode) in OpenAI's error shape, with their status."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        code = exc.reason.lower().replace(" ", "_")
        error = {"message": exc.text or exc.reason, "type": kind, "param": None, "code": code}
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": error}, status=exc.status, headers=allow)


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


def _expected_timeout(request: web.Request) -> float | None:
    """The edge's time for this try (Envoy's x-envoy-expected-rq-timeout-ms), in seconds."""
    value = request.headers.get("x-envoy-expected-rq-timeout-ms", "")
    return int(value) / 1000 if value.isdigit() else None

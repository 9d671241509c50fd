"""CallInterceptor: every call's errors mapped to its status; every ragmesh call timed and run
in its trace; spans for sampled traces only; with telemetry off, errors mapped all the same."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from services.common import metrics, telemetry
from services.common.errors import InvalidArgument
from services.common.interceptor import CallInterceptor

SERVICE = "ragmesh.test.Probe"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


class Probe:
    """A server whose one method reports the trace it ran in (or fails, when asked)."""

    def __init__(self, ratio: float, enabled: bool = True) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.interceptor = CallInterceptor(
            "probe", ratio, telemetry_on=enabled, tracer_provider=provider
        )
        self.server = grpc.aio.server(interceptors=[self.interceptor])

        async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if request == b"fail":
                raise InvalidArgument("query: must not be empty", field="query")
            if request == b"crash":
                raise KeyError("a secret the caller must not see")
            span = trace.get_current_span()
            recording = b"recording" if span.is_recording() else b"not-recording"
            headers = "".join(telemetry.traceparent().values())
            to_triton = "".join(telemetry.triton_traceparent().values())
            return b"|".join(
                [telemetry.trace_id().encode(), recording, headers.encode(), to_triton.encode()]
            )

        async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            for _ in range(2):
                yield telemetry.trace_id().encode()
            if request == b"fail":
                raise InvalidArgument("top_k: must be 1..50", field="top_k")
            if request == b"wait":
                await asyncio.sleep(10)

        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Say": grpc.unary_unary_rpc_method_handler(say),
                        "Count": grpc.unary_stream_rpc_method_handler(count),
                    },
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")


@pytest.fixture
async def probe(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Probe, grpc.aio.Channel]]:
    """A Probe sampling at `request.param`, or with telemetry off where that is None."""
    ratio = request.param
    server = Probe(ratio or 0.0, enabled=ratio is not None)
    await server.server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, channel
    await server.server.stop(None)


async def _say(channel: grpc.aio.Channel, body: bytes, traceparent: str = "") -> list[str]:
    metadata = (("traceparent", traceparent),) if traceparent else ()
    reply = await channel.unary_unary(f"/{SERVICE}/Say")(body, metadata=metadata, timeout=5)
    return reply.decode().split("|")


def _timed(method: str, code: str) -> float:
    sample = metrics.REQUEST_SECONDS.labels("probe", method, code)
    return sample._sum.get()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("probe", [1.0], indirect=True)
async def test_an_unsampled_caller_gets_no_span_but_keeps_its_trace(probe) -> None:
    server, channel = probe
    before = _timed("Say", "OK")
    trace_id, recording, onward, to_triton = await _say(
        channel, b"hi", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    )
    assert trace_id == CALLER_TRACE and recording == "not-recording"
    # Its calls carry the trace on, unsampled; Triton, which traces any context, gets none.
    assert onward.startswith(f"00-{CALLER_TRACE}-") and onward.endswith("-00")
    assert to_triton == ""
    assert server.exporter.get_finished_spans() == ()
    assert _timed("Say", "OK") > before  # timed all the same


@pytest.mark.parametrize("probe", [0.0], indirect=True)
async def test_a_sampled_caller_gets_a_server_span_in_its_trace(probe) -> None:
    server, channel = probe
    trace_id, recording, onward, to_triton = await _say(
        channel, b"hi", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    )
    assert trace_id == CALLER_TRACE and recording == "recording"
    assert onward.endswith("-01") and to_triton == onward
    (span,) = server.exporter.get_finished_spans()
    assert span.name == f"/{SERVICE}/Say" and span.kind == trace.SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN


@pytest.mark.parametrize("probe", [0.0], indirect=True)
async def test_a_new_trace_unsampled_at_ratio_0_still_has_an_id(probe) -> None:
    server, channel = probe
    first = await _say(channel, b"hi")
    second = await _say(channel, b"hi")
    assert len(first[0]) == 32 and first[0] != second[0] and first[0] != "0" * 32
    assert first[1] == "not-recording" and first[3] == ""
    assert server.exporter.get_finished_spans() == ()
    streamed = channel.unary_stream(f"/{SERVICE}/Count")(b"", timeout=5)
    ids = {reply.decode() async for reply in streamed}
    assert len(ids) == 1 and len(ids.pop()) == 32  # one trace across the stream's replies


@pytest.mark.parametrize("probe", [1.0], indirect=True)
async def test_a_new_trace_sampled_at_ratio_1_is_a_root_span(probe) -> None:
    server, channel = probe
    trace_id, recording, _, _ = await _say(channel, b"hi")
    assert recording == "recording"
    (span,) = server.exporter.get_finished_spans()
    assert span.parent is None and format(span.context.trace_id, "032x") == trace_id


@pytest.mark.parametrize("probe", [1.0], indirect=True)
async def test_an_error_is_timed_and_traced_with_the_status_the_caller_gets(probe) -> None:
    server, channel = probe
    before = _timed("Say", "INVALID_ARGUMENT")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _say(channel, b"fail")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _timed("Say", "INVALID_ARGUMENT") > before
    (span,) = server.exporter.get_finished_spans()
    # (A caller's mistake is no server error in OpenTelemetry's gRPC conventions.)
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _field(error: grpc.aio.AioRpcError) -> str:
    """The field named by the BadRequest detail of the call's google.rpc.Status."""
    (details,) = [v for k, v in error.trailing_metadata() if k == "grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    violation = error_details_pb2.BadRequest()
    assert status.code == error.code().value[0] and status.details[0].Unpack(violation)
    return str(violation.field_violations[0].field)


@pytest.mark.parametrize("probe", [1.0, None], indirect=True)
async def test_errors_are_mapped_with_telemetry_on_or_off(probe, caplog) -> None:
    server, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _say(channel, b"fail")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "query: must not be empty"
    assert _field(raised.value) == "query"
    # Anything else: INTERNAL with a generic message; the traceback goes to the log only.
    crashed, refused = _timed("Say", "INTERNAL"), _timed("Count", "INVALID_ARGUMENT")
    logged = caplog.at_level(logging.ERROR, logger="services.common.interceptor")
    with logged, pytest.raises(grpc.aio.AioRpcError) as raised:
        await _say(channel, b"crash")
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error"
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    # A stream's error after its first replies: the replies, then the status.
    streamed = channel.unary_stream(f"/{SERVICE}/Count")(b"fail", timeout=5)
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for reply in streamed:
            replies.append(reply)
    assert len(replies) == 2 and raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field(raised.value) == "top_k"
    timed = server.interceptor._traced is not None  # telemetry on
    assert (_timed("Say", "INTERNAL") > crashed) is timed
    assert (_timed("Count", "INVALID_ARGUMENT") > refused) is timed


@pytest.mark.parametrize("probe", [None], indirect=True)
async def test_with_telemetry_off_a_call_has_no_trace_and_no_timing(probe) -> None:
    server, channel = probe
    before = _timed("Say", "OK")
    trace_id, recording, onward, to_triton = await _say(
        channel, b"hi", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    )
    assert (trace_id, recording, onward, to_triton) == ("", "not-recording", "", "")
    assert server.exporter.get_finished_spans() == ()
    assert _timed("Say", "OK") == before


@pytest.mark.parametrize("probe", [0.0], indirect=True)
async def test_handlers_are_wrapped_once_per_method(probe) -> None:
    server, channel = probe
    handlers = server.interceptor._handlers
    await _say(channel, b"hi")
    first = handlers[f"/{SERVICE}/Say"]
    await _say(channel, b"hi", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")  # sampled: a span
    await _say(channel, b"hi")
    assert list(handlers) == [f"/{SERVICE}/Say"] and handlers[f"/{SERVICE}/Say"] is first


@pytest.mark.parametrize("probe", [0.0], indirect=True)
async def test_a_call_its_caller_leaves_is_timed_as_cancelled(probe) -> None:
    _, channel = probe
    before = _timed("Count", "CANCELLED")
    streamed = channel.unary_stream(f"/{SERVICE}/Count")(b"wait", timeout=5)
    assert len(await streamed.read()) == 32  # the first reply, then the stream waits
    streamed.cancel()
    for _ in range(100):
        if _timed("Count", "CANCELLED") > before:
            break
        await asyncio.sleep(0.01)
    assert _timed("Count", "CANCELLED") > before

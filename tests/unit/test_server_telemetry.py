"""ServerTelemetry: every call timed and run in its trace; spans for sampled traces only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from services.common import metrics, telemetry
from services.common.errors import ErrorInterceptor, InvalidArgument

SERVICE = "ragmesh.test.Probe"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


class Probe:
    """A server whose one method reports the trace it ran in (or fails, when asked)."""

    def __init__(self, ratio: float) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.server = grpc.aio.server(
            interceptors=[
                telemetry.ServerTelemetry("probe", ratio, tracer_provider=provider),
                ErrorInterceptor(),
            ]
        )

        async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if request == b"fail":
                raise InvalidArgument("query: must not be empty", field="query")
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
    server = Probe(request.param)
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

"""A no-op grpc.aio proxy hop: the least a Python gRPC gateway can cost, the floor of the
gateway benchmark (loadtest/bench_gateways.py).

    python -m loadtest.noop_proxy --port 9000 --upstream 127.0.0.1:8001

Every call, whatever its service and method, is passed to `--upstream` as it came: its
messages as bytes, never parsed, its metadata as it came, each response back as it comes
(a bidirectional stream for every method: the client's unary and streaming calls both
map onto it). No auth, no validation, no routing, no telemetry: what is left is grpc.aio's
server and client calls and the event loop (uvloop, as the gateway's).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import grpc
import uvloop

_HOP = {"connection", "te", "content-type", "grpc-timeout", "user-agent", "grpc-accept-encoding"}


class Forward(grpc.GenericRpcHandler):
    """Every method as a stream of bytes to the same method upstream."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        upstream = self._channel.stream_stream(method)  # no (de)serializers: bytes

        async def forward(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            metadata = tuple((k, v) for k, v in context.invocation_metadata() if k not in _HOP)
            remaining = context.time_remaining()
            call = upstream(requests, metadata=metadata, timeout=remaining)
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            finally:
                call.cancel()

        return grpc.stream_stream_rpc_method_handler(forward)


async def serve(port: int, upstream: str) -> None:
    async with grpc.aio.insecure_channel(upstream) as channel:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((Forward(channel),))
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"no-op proxy on 127.0.0.1:{bound} -> {upstream}", flush=True)
        await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.noop_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of a gRPC server")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()

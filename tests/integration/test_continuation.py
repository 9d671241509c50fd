"""Streams that survive (issue 19), on two real regions behind one edge: the default region's
Triton killed after a stream's first tokens, the answer goes on at the other region's Triton
as if nothing happened (greedy, the same text as an uninterrupted run) and its final message
says where and why; its Triton frozen (SIGSTOP), the same after the stall budget; both
regions' Tritons killed, the stream ends with the explicit error.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import grpc
import pytest
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.gameday]

# Long, so that the stream is still going when its Triton dies; no sources, so that both
# regions read the very same prompt.
REQUEST = pb.GenerateRequest(
    query="Write a long essay about Paris and Berlin.",
    tier="standard",
    skip_retrieval=True,
    bypass_cache=True,
    temperature=0.0,
    max_tokens=160,
)


def _stream(
    regions, kill: list[str], after: int = 4, fault: Callable[[], None] | None = None
) -> tuple[str, pb.GenerateResponse | None]:
    """The streamed text and the final message (None: the stream ended with its error); the
    processes in `kill` are SIGKILLed, and `fault` called, once `after` tokens have come."""
    tokens: list[str] = []
    with grpc.insecure_channel(regions.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = (("x-api-key", regions.config.mesh.demo_key),)
        for event in stub.GenerateStream(REQUEST, metadata=metadata, timeout=60):
            if event.HasField("final"):
                return "".join(tokens), event.final
            if event.HasField("error"):
                return "".join(tokens), None
            tokens.append(event.token)
            if len(tokens) == after:
                for name in kill:
                    regions.kill(name)
                if fault is not None:
                    fault()
    raise AssertionError("the stream ended with neither final nor error")


def _restart(regions, names: list[str]) -> None:
    """Back up before the next test; from the main thread, which outlives them (a child's
    parent-death signal is per thread: Mesh.respawn)."""
    for name in names:
        regions.restart(name)


def test_a_stream_whose_triton_dies_goes_on_in_the_other_region_unchanged(regions):
    local = f"triton-{regions.regions[0].name}"
    whole, uninterrupted = _stream(regions, kill=[])
    assert uninterrupted is not None and not uninterrupted.continuations
    assert uninterrupted.usage.completion_tokens > 20  # long enough to be cut
    try:
        text, final = _stream(regions, kill=[local])
    finally:
        _restart(regions, [local])
    assert final is not None, "the stream ended with its error"
    (continued,) = final.continuations
    assert continued.failed_endpoint.endswith(str(regions.regions[0].config.triton.grpc_port))
    assert continued.endpoint.endswith(str(regions.regions[1].config.triton.grpc_port))
    assert continued.after_tokens >= 4 and continued.reason
    assert text == whole  # nothing repeated, nothing missing
    assert final.usage.completion_tokens == uninterrupted.usage.completion_tokens
    assert final.usage.prompt_tokens > uninterrupted.usage.prompt_tokens  # read twice
    assert (final.tier, final.degraded) == ("standard", False)


def test_a_stream_whose_triton_freezes_goes_on_after_its_stall_budget(regions):
    """The default region's Triton stopped (SIGSTOP to its process group): no error ever
    comes, only silence, until the tier's inter_token_timeout_s. (SIGSTOP to the model's
    stub alone is seen by Triton's own health check of its stubs first: the stream then
    goes on at once, for Triton's error "Stub process ... is not healthy".)"""
    group = regions.processes[f"triton-{regions.regions[0].name}"].pid
    budget = regions.config.gateway.tiers["standard"].inter_token_timeout_s
    whole, _ = _stream(regions, kill=[])
    try:
        text, final = _stream(regions, kill=[], fault=lambda: os.killpg(group, signal.SIGSTOP))
    finally:
        os.killpg(group, signal.SIGCONT)
    assert final is not None, "the stream ended with its error"
    (continued,) = final.continuations
    assert continued.reason == f"stalled: no token for {budget:g} s"
    assert continued.added_seconds >= budget
    assert text == whole


def test_a_stream_whose_tritons_all_die_ends_with_its_error(regions):
    names = [f"triton-{r.name}" for r in regions.regions]
    try:
        text, final = _stream(regions, kill=names)
    finally:
        _restart(regions, names)
    assert final is None and text  # tokens went out, then the error: never a clean end

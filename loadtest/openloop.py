"""Open-loop load: arrivals on a fixed schedule, latency from each intended send time.

Request i is due when the schedule says, whatever happened to the ones before it: a stall
in the system under test shows as latency of every request due during it, instead of
silently slowing the sender (coordinated omission). One `Load` drives any protocol: it
calls a `Send` per request, which returns what the reply said (`Reply`).

    load = Load(grpc_generate(stub, key, requests), steady(500.0))
    samples = await load.run(duration_s=10.0)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import grpc
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

REQUEST_TIMEOUT_S = 30.0
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass(frozen=True)
class Reply:
    status: str = "OK"  # "OK" or the gRPC status name
    degraded: bool = False
    region: str = ""
    reason: str = ""  # why it degraded, or the error's message


@dataclass(frozen=True)
class Sample:
    at_s: float  # intended send time, from the start of the load
    latency_s: float  # from the intended send time to the answer
    status: str
    degraded: bool = False
    region: str = ""
    reason: str = ""


Send = Callable[[int], Awaitable[Reply]]  # request number -> what its reply said
Rate = Callable[[float], float]  # seconds since start -> requests per second


def steady(rate: float) -> Rate:
    return lambda _t: rate


def burst(rate: float, factor: float, start_s: float, length_s: float) -> Rate:
    """`rate`, and `factor` times it from start_s for length_s."""
    return lambda t: rate * factor if start_s <= t < start_s + length_s else rate


class Load:
    """Sends request i at its due time (the schedule integrates `rate`), each in its own
    task, so no reply delays the next send."""

    def __init__(self, send: Send, rate: Rate) -> None:
        self._send = send
        self._rate = rate
        self.start = 0.0
        self.answered: list[Sample] = []  # as they complete

    def now(self) -> float:
        # perf_counter, not the loop's clock: uvloop's counts whole milliseconds.
        return time.perf_counter() - self.start

    async def run(
        self, *, duration_s: float = float("inf"), stop: asyncio.Event | None = None
    ) -> list[Sample]:
        """Until duration_s has passed or `stop` is set; then waits for every reply."""
        stop = stop or asyncio.Event()
        self.start = time.perf_counter()
        tasks: list[asyncio.Task[Sample]] = []
        due, i = 0.0, 0
        while due < duration_s - 1e-9 and not stop.is_set():  # 1e-9: float sums of 1/rate
            if (wait := due - self.now()) > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                    break
                except TimeoutError:
                    pass
            tasks.append(asyncio.create_task(self._one(i, due)))
            i += 1
            due += 1.0 / self._rate(due)
        return list(await asyncio.gather(*tasks))

    async def _one(self, i: int, due: float) -> Sample:
        reply = await self._send(i)
        sample = Sample(
            due, self.now() - due, reply.status, reply.degraded, reply.region, reply.reason
        )
        self.answered.append(sample)
        return sample


def grpc_generate(
    stub: gateway_pb2_grpc.GatewayStub,
    key: str,
    requests: Sequence[pb.GenerateRequest],
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> Send:
    """Unary Generate calls on a GatewayStub, cycling through `requests`."""
    metadata = (("x-api-key", key),)

    async def send(i: int) -> Reply:
        try:
            reply = await stub.Generate(
                requests[i % len(requests)], metadata=metadata, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return Reply(exc.code().name, reason=exc.details() or "")
        return Reply("OK", reply.degraded, reply.region, reply.degraded_reason)

    return send


def http_generate(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    bodies: Sequence[dict[str, object]],
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> Send:
    """POSTs of JSON bodies to Envoy's transcoded /v1/generate on an aiohttp session. The
    status is the gRPC status Envoy passes on (`grpc-status`); without one, a 200 is OK and
    any other code reads `HTTP_<code>`."""
    headers = {"x-api-key": key, "content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(i: int) -> Reply:
        body = json.dumps(bodies[i % len(bodies)])
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
                payload = await response.read()
                code = response.headers.get("grpc-status")
                status = (
                    _STATUS_NAMES.get(int(code), "UNKNOWN")
                    if code is not None
                    else "OK"
                    if response.status == 200
                    else f"HTTP_{response.status}"
                )
        except TimeoutError:
            return Reply("DEADLINE_EXCEEDED", reason="client timeout")
        except aiohttp.ClientError as exc:
            return Reply("UNAVAILABLE", reason=type(exc).__name__)
        if status != "OK":
            return Reply(status, reason=payload[:200].decode(errors="replace"))
        answer = json.loads(payload)
        return Reply(
            "OK",
            bool(answer.get("degraded")),
            str(answer.get("region", "")),
            str(answer.get("degradedReason", "")),
        )

    return send

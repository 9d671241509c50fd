"""Locust users of the public Gateway API over gRPC, through the Envoy edge.

    .venv-locust/bin/locust -f loadtest/locustfile.py --headless --host 127.0.0.1:8080 \
        --users 4 --spawn-rate 2 --run-time 30s

Each user asks the economy tier (no LLM: the figures are the request path) with the
answer cache skipped, and searches, three asks to one search. `--host` is the edge's gRPC
address (an `http://` prefix is dropped); the API key comes from RAGMESH_API_KEY, else the
demo key in config/mesh.yaml. Every call is one request event named after its method, with
its gRPC status code as the error of a failed call. `make locust` runs it against
`make up`'s mesh, from a venv of its own (locust runs on gevent, which the main venv has not).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import yaml
from locust import User, between, task

# grpc's C core does its own I/O: without this, one waiting call blocks every user.
grpc_gevent.init_gevent()

ROOT = Path(__file__).resolve().parents[1]
# The generated stubs (`make gen`) and the sample corpus's questions (standard library only);
# this venv has neither installed.
sys.path[:0] = [str(ROOT / "build" / "gen"), str(ROOT)]
from ragmesh.v1 import gateway_pb2 as pb  # noqa: E402
from ragmesh.v1 import gateway_pb2_grpc  # noqa: E402

from services.client.sample_corpus import QUESTIONS  # noqa: E402

TIMEOUT_S = 30.0
SEARCHES = ("json decoder", "temporary directory", "ordered dictionary", "regular expression")


def api_key() -> str:
    key = os.environ.get("RAGMESH_API_KEY")
    if key:
        return key
    config = yaml.safe_load((ROOT / "config" / "mesh.yaml").read_text(encoding="utf-8"))
    return str(config["mesh"]["demo_key"])


class GrpcStatusError(Exception):
    """A failed call, as locust lists it among its failures: the status code and details."""


class GatewayUser(User):
    host = "127.0.0.1:8080"
    wait_time = between(0.5, 1.0)

    def on_start(self) -> None:
        target = (self.host or GatewayUser.host).removeprefix("http://")
        self._channel = grpc.insecure_channel(target)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("x-api-key", api_key()),)

    def on_stop(self) -> None:
        self._channel.close()

    # locust is not in the main venv, where mypy runs: its decorator is untyped there.
    @task(3)  # type: ignore[untyped-decorator]
    def generate(self) -> None:
        request = pb.GenerateRequest(
            query=random.choice(QUESTIONS), tier="economy", bypass_cache=True
        )
        self._unary("Generate", self._stub.Generate, request)

    @task(1)  # type: ignore[untyped-decorator]
    def search(self) -> None:
        self._unary("Search", self._stub.Search, pb.SearchRequest(query=random.choice(SEARCHES)))

    def _unary(self, name: str, method: Callable[..., Any], request: Any) -> None:
        started = time.perf_counter()
        reply, error, status = None, None, grpc.StatusCode.OK
        try:
            reply = method(request, timeout=TIMEOUT_S, metadata=self._metadata)
        except grpc.RpcError as e:
            status = e.code()
            error = GrpcStatusError(f"{status.name}: {e.details()}")
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=reply.ByteSize() if reply is not None else 0,
            response=reply,
            context={"grpc_status": status.name},
            exception=error,
        )

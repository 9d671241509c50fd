"""Builds the gateway gRPC server: the one composition root of this plane."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health
from ragmesh.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc

from services.common import metrics as common_metrics
from services.common import serving
from services.config.control import ControlConfig
from services.config.gateway import GatewayConfig, gateway_sockets
from services.config.telemetry import TelemetryConfig
from services.gateway.admin import AdminServicer
from services.gateway.control import Control
from services.gateway.core import GatewayCore
from services.gateway.openai_api import OpenAIApi
from services.gateway.retrieval_client import RetrievalClient
from services.gateway.servicer import GatewayServicer
from services.gateway.tiers import Tiers

LOGGER = logging.getLogger(__name__)
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


@dataclass
class GatewayServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    retrieval: RetrievalClient
    tiers: Tiers
    control: Control
    servicer: GatewayServicer
    openai: OpenAIApi
    config: GatewayConfig
    metrics_port: int
    seed: dict[str, str]
    openai_port: int = 0  # bound at start; 0 while stopped or with the API off

    async def start(self) -> None:
        common_metrics.serve(self.metrics_port, self.config.host)
        await self.control.start(self.seed)
        await self.server.start()
        if self.config.openai_port:
            self.openai_port = await self.openai.start(self.config.host, self.config.openai_port)
        await serving.set_serving(self.health, [SERVICE_NAME, ADMIN_SERVICE_NAME], up=True)

    async def _drain(self, grace_s: float) -> None:
        """Open streams of both APIs get the grace; the OpenAI API's health check fails at
        once, so the edge sends it nothing new."""
        self.openai.serving = False
        await self.servicer.close_streams(grace_s)

    async def close_clients(self) -> None:
        await self.openai.stop()
        await self.retrieval.close()
        await self.tiers.close()
        await self.control.close()

    async def stop(self, grace_s: float | None = None) -> None:
        await serving.stop_draining(self.server, grace_s, self._drain)
        await self.close_clients()

    async def serve(self) -> None:
        await self.start()
        await serving.run_until_signal(
            self.server, self.health, [SERVICE_NAME, ADMIN_SERVICE_NAME], drain=self._drain
        )
        await self.close_clients()


def build_server(
    config: GatewayConfig,
    tracing: TelemetryConfig,
    control_config: ControlConfig,
    worker: int | None = None,
    data_dir: str = "",
) -> GatewayServer:
    """With telemetry off (`tracing.enabled` false): no spans, per-call metrics or endpoint.
    `worker`: this process's number among `config.workers` (services/gateway/workers.py),
    which share its ports; the supervisor serves their metrics. A worker also serves both
    APIs on its own Unix sockets (config.gateway.worker_sockets) under `data_dir`, the mesh's,
    when given. Raises services.control.policy.PolicyError when the policy file is broken,
    ValueError when a socket's path is too long."""
    retrieval = RetrievalClient(config.retrieval_target)
    tiers = Tiers(config)
    # The shared store tells gateways apart by this id; a restarted worker takes its number's.
    gateway_id = f"{socket.gethostname()}:{config.port}" if config.port else ""
    if gateway_id and worker is not None:
        gateway_id += f"/{worker}"
    control = Control(control_config, config.region, Path(control_config.policy_file), gateway_id)
    missing = sorted(set(control.policy.policy.tiers) - set(config.tiers))
    if control_config.enabled and missing:  # it would route there: a 400 per request
        LOGGER.warning(
            "the routing policy names tiers this gateway does not declare: %s", ", ".join(missing)
        )
    core = GatewayCore(config, retrieval, tiers, control if control_config.enabled else None)
    shared = worker is not None
    server = serving.new_server("gateway", tracing, reuse_port=shared)
    servicer = GatewayServicer(core, control)
    ratio = tracing.sampled
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(control, core), server)
    names = [SERVICE_NAME, ADMIN_SERVICE_NAME]
    health_servicer = serving.add_health_and_reflection(server, names)
    port = serving.bind(server, config.host, config.port)
    grpc_socket, openai_socket = _own_sockets(data_dir, config, worker)
    if grpc_socket is not None:
        server.add_insecure_port(f"unix:{grpc_socket}")
    return GatewayServer(
        server=server,
        port=port,
        health=health_servicer,
        retrieval=retrieval,
        tiers=tiers,
        control=control,
        servicer=servicer,
        openai=OpenAIApi(core, servicer, ratio, reuse_port=shared, unix_socket=openai_socket),
        config=config,
        metrics_port=config.metrics_port if tracing.enabled and not shared else 0,
        seed=dict(config.api_keys),
    )


def _own_sockets(
    data_dir: str, config: GatewayConfig, worker: int | None
) -> tuple[Path | None, Path | None]:
    """Worker `worker`'s own sockets, gRPC and the OpenAI API (config.gateway.gateway_sockets),
    ready to bind: what a worker of its number left is removed. None for a lone gateway, or
    without `data_dir`, and for an API that is off."""
    if worker is None or not data_dir:
        return None, None
    grpc_api, openai_api = gateway_sockets(data_dir, config)
    own = (grpc_api[worker] if grpc_api else None, openai_api[worker] if openai_api else None)
    for path in own:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
    return own

"""Builds the gateway gRPC server: the one composition root of this plane."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health
from ragmesh.v1 import gateway_pb2, gateway_pb2_grpc

from services.common import metrics as common_metrics
from services.common import serving
from services.config.gateway import GatewayConfig
from services.config.telemetry import TelemetryConfig
from services.gateway.auth import Authenticator
from services.gateway.core import GatewayCore
from services.gateway.retrieval_client import RetrievalClient
from services.gateway.servicer import GatewayServicer
from services.gateway.tiers import Tiers

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


@dataclass
class GatewayServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    retrieval: RetrievalClient
    tiers: Tiers
    servicer: GatewayServicer
    metrics_port: int

    async def start(self) -> None:
        common_metrics.serve(self.metrics_port)
        await self.server.start()
        await serving.set_serving(self.health, [SERVICE_NAME], up=True)

    async def close_clients(self) -> None:
        await self.retrieval.close()
        await self.tiers.close()

    async def stop(self, grace_s: float | None = None) -> None:
        await serving.stop_draining(self.server, grace_s, self.servicer.close_streams)
        await self.close_clients()

    async def serve(self) -> None:
        await self.start()
        await serving.run_until_signal(
            self.server, self.health, [SERVICE_NAME], drain=self.servicer.close_streams
        )
        await self.close_clients()


def build_server(config: GatewayConfig, tracing: TelemetryConfig) -> GatewayServer:
    """With telemetry off (`tracing.enabled` false): no spans, per-call metrics or endpoint."""
    retrieval = RetrievalClient(config.retrieval_target)
    tiers = Tiers(config)
    core = GatewayCore(config, retrieval, tiers)
    server = serving.new_server("gateway", tracing)
    servicer = GatewayServicer(core, Authenticator(config.api_keys))
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    health_servicer = serving.add_health_and_reflection(server, [SERVICE_NAME])
    port = serving.bind(server, config.host, config.port)
    return GatewayServer(
        server=server,
        port=port,
        health=health_servicer,
        retrieval=retrieval,
        tiers=tiers,
        servicer=servicer,
        metrics_port=config.metrics_port if tracing.enabled else 0,
    )

"""python -m services.gateway --config config/mesh.yaml"""

from __future__ import annotations

import logging

from services.common import serving, telemetry
from services.config.mesh import MeshConfig
from services.gateway.server import build_server

LOGGER = logging.getLogger(__name__)


async def serve(config_path: str) -> None:
    mesh = MeshConfig.load(config_path)
    config = mesh.gateway
    tracing = telemetry.setup("ragmesh-gateway", config.region, mesh.telemetry)
    server = build_server(config, mesh.telemetry)
    LOGGER.info("gateway listening on %s:%d (region %s)", config.host, server.port, config.region)
    try:
        await server.serve()
    finally:
        tracing.shutdown()  # exports what is queued


if __name__ == "__main__":
    serving.main("python -m services.gateway", serve)

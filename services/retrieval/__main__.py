"""python -m services.retrieval --config config/mesh.yaml"""

from __future__ import annotations

import logging

from services.common import serving, telemetry
from services.config.mesh import MeshConfig
from services.retrieval.server import build_server

LOGGER = logging.getLogger(__name__)


async def serve(config_path: str) -> None:
    mesh = MeshConfig.load(config_path)
    config = mesh.retrieval
    tracing = telemetry.setup("ragmesh-retrieval", config.region, mesh.telemetry)
    server = build_server(config, mesh.telemetry)
    LOGGER.info("retrieval listening on %s:%d", config.host, server.port)
    try:
        await server.serve()
    finally:
        tracing.shutdown()  # exports what is queued


if __name__ == "__main__":
    serving.main("python -m services.retrieval", serve)

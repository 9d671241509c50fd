"""python -m services.gateway --config config/mesh.yaml"""

from __future__ import annotations

import logging

from services.common import serving
from services.gateway.server import build_server
from services.mesh.config import MeshConfig

LOGGER = logging.getLogger(__name__)


async def serve(config_path: str) -> None:
    config = MeshConfig.load(config_path).gateway
    server = build_server(config)
    LOGGER.info("gateway listening on %s:%d (region %s)", config.host, server.port, config.region)
    await server.serve()


if __name__ == "__main__":
    serving.main("python -m services.gateway", serve)

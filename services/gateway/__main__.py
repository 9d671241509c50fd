"""python -m services.gateway --config config/mesh.yaml"""

from __future__ import annotations

import logging

from services.common import serving
from services.config.mesh import MeshConfig
from services.gateway.server import GatewayServer, build_server


def _build(mesh: MeshConfig) -> GatewayServer:
    for problem in mesh.budgets_below_slo():
        logging.getLogger("services.gateway").warning(problem)
    return build_server(mesh.gateway, mesh.telemetry, mesh.control)


if __name__ == "__main__":
    serving.run_plane("gateway", _build)

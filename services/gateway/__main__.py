"""python -m services.gateway --config config/mesh.yaml"""

from __future__ import annotations

from services.common import serving
from services.gateway.server import build_server

if __name__ == "__main__":
    serving.run_plane(
        "gateway", lambda mesh: build_server(mesh.gateway, mesh.telemetry, mesh.control)
    )

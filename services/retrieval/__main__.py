"""python -m services.retrieval --config config/mesh.yaml"""

from __future__ import annotations

from services.common import serving
from services.retrieval.server import build_server

if __name__ == "__main__":
    serving.run_plane("retrieval", lambda mesh: build_server(mesh.retrieval, mesh.telemetry))

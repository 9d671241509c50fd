"""python -m services.gateway --config config/mesh.yaml

With `gateway.workers` above 1, the supervisor of that many worker processes
(services/gateway/workers.py); each of them, or a lone gateway, serves."""

from __future__ import annotations

import logging
import sys

from services.common import serving
from services.config.gateway import gateway_sockets
from services.config.mesh import MeshConfig
from services.gateway import workers


def _build(mesh: MeshConfig) -> serving.PlaneServer:
    # Imported here, not above: a supervisor of workers serves nothing and stays small.
    from services.gateway.server import build_server

    for problem in mesh.budgets_below_slo():
        logging.getLogger("services.gateway").warning(problem)
    return build_server(
        mesh.gateway, mesh.telemetry, mesh.control, workers.worker(), mesh.mesh.data_dir
    )


if __name__ == "__main__":
    mesh = MeshConfig.load(serving.arguments("python -m services.gateway").config)
    if mesh.gateway.workers > 1 and workers.worker() is None:
        metrics = (mesh.gateway.host, mesh.gateway.metrics_port if mesh.telemetry.enabled else 0)
        grpc_api, openai_api = gateway_sockets(mesh.mesh.data_dir, mesh.gateway)
        sockets = [*grpc_api, *openai_api]
        sys.exit(workers.supervise(sys.argv[1:], mesh.gateway.workers, metrics, sockets))
    if workers.worker() is not None:
        workers.watch_parent()
    serving.run_plane("gateway", _build)

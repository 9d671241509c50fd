"""python -m services.retrieval --config config/mesh.yaml"""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common import serving
from services.mesh.config import MeshConfig
from services.retrieval.server import build_server

LOGGER = logging.getLogger(__name__)


async def _main(config_path: str) -> None:
    config = MeshConfig.load(config_path).retrieval
    server = build_server(config)
    LOGGER.info(
        "retrieval listening on %s:%d (milvus %s)", config.host, server.port, config.milvus_uri
    )
    await server.serve()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.retrieval")
    parser.add_argument("--config", default="config/mesh.yaml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    serving.configure_logging(args.log_level)
    asyncio.run(_main(args.config))


if __name__ == "__main__":
    main()

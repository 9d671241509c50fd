"""What every `ragmesh` command that calls the mesh chooses alike: the address and the key."""

from __future__ import annotations

import argparse
import os

from services.config.mesh import MeshConfig


def target(args: argparse.Namespace, config: MeshConfig) -> str:
    """--target, or the local Envoy edge."""
    return args.target or f"127.0.0.1:{config.edge.listen_port}"


def api_key(args: argparse.Namespace, config: MeshConfig) -> str:
    """--api-key, $RAGMESH_API_KEY or the demo key."""
    return args.api_key or os.environ.get("RAGMESH_API_KEY") or config.mesh.demo_key

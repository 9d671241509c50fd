"""ragmesh's Python planes: gateway, retrieval, the mesh launcher and the CLI."""

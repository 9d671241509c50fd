"""ragmesh's Python code, one room per concern (docs/architecture.md): config, contract,
common, triton, client, the planes (gateway, retrieval, console, edge), supervisor, cli."""

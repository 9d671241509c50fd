"""Clients of the public API: the gateway client the CLI, `ragmesh up` and the load tools
share, documents read from disk, and the sample corpus."""

"""The edge plane: Envoy's config rendered from the mesh config (envoy/ keeps Envoy's own
files, the request guard)."""

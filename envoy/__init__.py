"""The edge plane: renders the Envoy config from the mesh config."""

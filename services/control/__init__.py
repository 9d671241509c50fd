"""The control plane: tenants and keys, admission (limits, budgets, leases), usage records,
the routing policy."""

"""The control plane's Prometheus metrics, served with the gateway's."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LEASE_WAITS = Counter(
    "ragmesh_control_lease_waits_total",
    "Requests that waited for a lease take (a cold counter or a burst); steady traffic none",
)
STORE_TAKES = Counter(
    "ragmesh_control_store_takes_total", "Lease takes sent to the store, by result", ["result"]
)
STORE_UP = Gauge(
    "ragmesh_control_store_up",
    "1 while the last store call of this gateway succeeded, 0 while it runs on the offline rule",
    multiprocess_mode="livemin",  # with workers (services/gateway/workers.py): 0 if any is off
)
SOFT_CAP = Counter(
    "ragmesh_control_soft_cap_crossings_total",
    "Budgets a tenant's spending took past their soft cap, by metric and window",
    ["metric", "window"],
)
USAGE_DROPPED = Counter(
    "ragmesh_control_usage_records_dropped_total",
    "Usage records dropped: the store away long enough to fill the buffer (MAX_BUFFERED)",
)

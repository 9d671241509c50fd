"""What the mesh is doing now: every layer's metrics, scraped in one pass, kept for a window.

One Snapshot holds a scrape of each endpoint (Envoy's stats and its hosts' health, and each
region's gateway, retrieval and Triton metrics); an Observer keeps the snapshots of the
last `window_s` seconds, and the difference between the oldest and the newest is what the
topology page and `ragmesh slo` report.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any

from services.config.gateway import socket_port
from services.config.mesh import MeshConfig
from services.config.regions import Region, regions
from services.console.scrape import TIMEOUT_S, Labels, Scrape, fetch

HOST_RQ = "envoy_host_rq_total"
HOST_ERRORS = "envoy_host_rq_error_total"
HOST_HEALTHY = "envoy_host_healthy"


def url(host: str, port: int, path: str) -> str:
    """http://host:port/path, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def targets(config: MeshConfig) -> dict[str, str]:
    """Endpoint name -> metrics URL: `envoy` (its admin port, on the console's own host:
    Envoy's admin stays on loopback), and `<plane>-<region>` for every region, on the
    plane's host (`gateway.host`, `retrieval.host`, `triton.host`)."""
    urls = {"envoy": url("127.0.0.1", config.edge.admin_port, "/stats/prometheus")}
    for region in regions(config):
        c = region.config
        for name, host, port in (
            ("gateway", c.gateway.host, c.gateway.metrics_port),
            ("retrieval", c.retrieval.host, c.retrieval.metrics_port),
            ("inference", c.triton.host, c.triton.metrics_port),
        ):
            urls[f"{name}-{region.name}"] = url(host, port, "/metrics")
    return urls


def envoy_hosts(admin_url: str) -> Scrape | None:
    """Envoy's per-host view (/clusters): requests sent to and health of each upstream, as
    samples labelled by cluster and port."""
    try:
        with urllib.request.urlopen(f"{admin_url}/clusters?format=json", timeout=TIMEOUT_S) as r:
            clusters = json.load(r)["cluster_statuses"]
    except (OSError, ValueError, KeyError):
        return None
    return hosts_scrape(clusters)


def hosts_scrape(clusters: list[dict[str, Any]]) -> Scrape:
    """envoy_hosts() of Envoy's `cluster_statuses`."""
    samples: dict[tuple[str, Labels], float] = {}
    for cluster in clusters:
        for host in cluster.get("host_statuses", []):
            labels: Labels = (("cluster", str(cluster["name"])), ("port", _port(host["address"])))
            stats = {s["name"]: float(s.get("value", 0)) for s in host.get("stats", [])}
            health = host.get("health_status", {})
            failed = health.get("failed_active_health_check") or health.get("failed_outlier_check")
            # A gateway's workers are a host each: their requests add up; it is up while one is.
            for name, value in ((HOST_RQ, "rq_total"), (HOST_ERRORS, "rq_error")):
                samples[(name, labels)] = samples.get((name, labels), 0.0) + stats.get(value, 0.0)
            up = samples.get((HOST_HEALTHY, labels), 0.0)
            samples[(HOST_HEALTHY, labels)] = max(up, 0.0 if failed else 1.0)
    return Scrape(samples)


def _port(address: dict[str, Any]) -> str:
    """The port an Envoy host serves: its own, or for a gateway worker's socket (a pipe) the
    port of the API it serves (services/config/gateway.py worker_sockets)."""
    if "pipe" in address:
        return str(socket_port(address["pipe"]["path"]))
    return str(address["socket_address"]["port_value"])


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    scrapes: dict[str, Scrape | None]  # endpoint name -> its scrape, None if it did not answer

    def since(self, earlier: Snapshot | None) -> dict[str, Scrape | None]:
        """Per endpoint, what happened between `earlier` and this snapshot."""
        old = earlier.scrapes if earlier else {}
        return {
            name: s.since(old.get(name)) if s is not None else None
            for name, s in self.scrapes.items()
        }


class Observer:
    """Scrapes the mesh on poll() and keeps the last `window_s` seconds of snapshots."""

    def __init__(self, config: MeshConfig, window_s: float) -> None:
        self.config = config
        self.regions: list[Region] = regions(config)
        self.window_s = window_s
        self._targets = targets(config)
        self._admin = url("127.0.0.1", config.edge.admin_port, "")
        self._history: deque[Snapshot] = deque()

    def poll(self) -> Snapshot:
        scrapes = {name: fetch(url) for name, url in self._targets.items()}
        scrapes["envoy-hosts"] = envoy_hosts(self._admin)
        return self.record(Snapshot(time.monotonic(), scrapes))

    def record(self, snapshot: Snapshot) -> Snapshot:
        self._history.append(snapshot)
        while len(self._history) > 2 and snapshot.at - self._history[1].at >= self.window_s:
            self._history.popleft()
        return snapshot

    def window(self) -> tuple[Snapshot, dict[str, Scrape | None], float]:
        """The newest snapshot, what happened over the window, and the window's seconds.

        With one snapshot only, everything since each process started, over 0 seconds.
        """
        latest = self._history[-1]
        oldest = self._history[0] if len(self._history) > 1 else None
        span = latest.at - oldest.at if oldest else 0.0
        return latest, latest.since(oldest), span

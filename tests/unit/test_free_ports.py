"""Ports for meshes on free ports (services/supervisor/launcher.py): never in the range the
kernel draws connections' source ports from, and never the same twice in one process."""

from __future__ import annotations

from pathlib import Path

from services.supervisor import launcher


def test_free_ports_are_under_the_ephemeral_range_and_never_handed_out_twice():
    low, high = launcher._port_range()
    ports = [launcher.free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(low <= port < high for port in ports)
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert high + launcher._MAX_STRIDE <= ephemeral  # a second region's ports too

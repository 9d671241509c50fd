"""Short forms of `make bench-edge` and `make bench-triton-streams`: each starts what it
measures, loads every variant and prints its table. Completion and the table's rows are
asserted, never the figures: this machine is shared and noisy."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _run(header: str, *argv: str) -> list[list[str]]:
    """The benchmark's printed rows: the lines after its table's header, which holds
    `header`."""
    done = subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout.rsplit(header, 1)[1].splitlines()
    return [line.split() for line in table[1:] if line.strip()]


def test_the_edge_benchmark_measures_both_envoys_without_errors():
    rows = _run(
        "gateway   path", "loadtest.bench_edge", "--rates", "50", "--seconds", "1", "--rounds", "1"
    )
    assert [" ".join(row[1:-6]) for row in rows] == [
        "envoy default threads",
        "envoy --concurrency 1",
    ]
    assert all(row[0] == "50" and row[-6] == "0" for row in rows)  # every request answered
    assert all(float(row[-3]) > 0 and float(row[-2]) > 0 for row in rows)  # Envoy's CPU, counted


def test_the_streams_benchmark_measures_each_call():
    rows = _run("p99 ms", "loadtest.bench_triton_streams", "--requests", "60", "--rounds", "1")
    names = [" ".join(row[:-5]) for row in rows[:-1]]
    assert names == ["a stream per request", "the same, call.write", "SharedStream"]
    assert rows[-1][:4] == ["a", "stream", "per", "request"]  # the ratios

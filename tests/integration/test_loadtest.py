"""A short load run (`make loadtest`) on a mesh of its own, and the SLO gate on its CSV."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.console.gate import read_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 6 req/s for 6 s, 5x for the middle 2 s: 4 s x 6 + 2 s x 30 requests (one more or less
# where the schedule's float sums meet the burst's edges).
RUN = ["--scenario", "burst", "--rate", "6", "--duration", "6", "--protocol", "http"]
EXPECTED = 84
# Budgets no run on a busy CI machine breaks: the test is of the gate, not of speed.
LOOSE = {f"RAGMESH_SLO_{stage}_MS": "600000" for stage in ("TOTAL", "EDGE", "GATEWAY")} | {
    "RAGMESH_SLO_RETRIEVAL_MS": "600000",
    "RAGMESH_SLO_TIME_TO_FIRST_TOKEN_MS": "600000",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("loadtest")
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.run", *RUN, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout


def test_the_run_reports_every_layer_and_writes_its_files(run):
    out, printed = run
    stages = [r.stage for r in read_csv(out / "burst.csv")]
    assert stages == [
        "total",
        "edge",
        "gateway",
        "retrieval",
        "time_to_first_token",
        "time_per_output_chunk",
    ]
    for stage in stages:
        assert f"  {stage} " in printed
    rows = {r.stage: r for r in read_csv(out / "burst.csv")}
    sent = rows["total"].requests
    assert abs(sent - EXPECTED) <= 1 and rows["total"].errors == 0
    assert rows["total"].statuses == f"OK:{sent}"
    # The mesh's own metrics saw the same requests: the gateway every one, retrieval a
    # search for each (plus none from elsewhere: the mesh is the run's own).
    assert rows["gateway"].requests == sent
    assert rows["retrieval"].requests == sent
    assert 0 < rows["total"].p50_ms <= rows["total"].p99_ms
    with (out / "burst-requests.csv").open() as f:
        requests = list(csv.DictReader(f))
    assert len(requests) == sent and {r["status"] for r in requests} == {"OK"}
    assert "burst 5x: 2.0..4.0 s" in printed
    assert (out / "burst.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def gate(csv_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "gate", str(csv_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_the_gate_passes_the_run_within_budgets_and_fails_a_tightened_one(run):
    out, _ = run
    kept = gate(out / "burst.csv", **LOOSE)
    assert kept.returncode == 0, kept.stdout
    assert "within every budget" in kept.stdout
    tight = gate(out / "burst.csv", **{**LOOSE, "RAGMESH_SLO_TOTAL_MS": "0.5"})
    assert tight.returncode == 1
    assert "BREACH total: p99" in tight.stdout and "over its budget of 0.5 ms" in tight.stdout

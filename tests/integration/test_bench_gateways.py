"""The gateway benchmark's short form (`python -m loadtest.bench_gateways --short`): it
starts every path's processes, loads each, and reports every table. Completion and the
report's shape are asserted, never the figures: this machine is shared and noisy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtest.litellm_side import VENV

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def printed() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_gateways", "--short"],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _rows(printed: str, title: str, header: int = 1) -> list[list[str]]:
    """The rows of the table under the line that starts with `title` (and `header` lines)."""
    lines = printed.rsplit(title, 1)[1].split("\n\n", 1)[0].splitlines()[1 + header :]
    return [line.split() for line in lines if line.strip()]


def test_every_path_is_measured_one_at_a_time_and_at_a_rate(printed):
    paths = ["triton", "floor", "ragmesh", "ragmesh-2w", "ragmesh-envoy", "mock", "ragmesh-openai"]
    if (VENV / ".installed").exists():
        paths.append("litellm")
    single = {row[0]: row for row in _rows(printed, "one request at a time")}
    assert list(single) == paths
    assert all(int(single[p][1]) > 0 for p in paths)  # answered, each of them
    rated = {row[1]: row for row in _rows(printed, "open loop")}
    assert list(rated) == paths
    assert all(row[3] == "0" for row in rated.values())  # no errors at the short form's rate
    best = {row[0]: row for row in _rows(printed, "highest rate with added p99", header=0)}
    assert list(best) == paths[1:5] + paths[6:]  # the gateways, not the baselines


def test_streams_and_the_ratios_are_reported(printed):
    streams = {row[1]: row for row in _rows(printed, "streams open at once")}
    assert {"mock", "ragmesh-openai"} <= set(streams)
    assert all(row[2] == row[3] for row in streams.values())  # every stream whole
    most = {row[0]: row for row in _rows(printed, "the most streams at once", header=0)}
    assert {"mock", "ragmesh-openai"} <= set(most)
    assert "gateway CPU a request / the floor's" in printed
    assert "added p99 one at a time, ragmesh minus the floor" in printed

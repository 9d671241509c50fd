"""The open-loop schedule and the SLO gate's reading of a run, without a mesh."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.openloop import Load, Reply, burst, steady
from services.config.console import SloConfig
from services.console.gate import breaches, read_csv, write_csv
from services.console.layers import SloRow


async def test_requests_leave_on_schedule_whatever_the_replies_do():
    sent: list[int] = []

    async def send(i: int) -> Reply:
        sent.append(i)
        await asyncio.sleep(0.3)  # every reply is slow: the sender must not wait for it
        return Reply("OK" if i % 4 else "UNAVAILABLE")

    samples = await Load(send, steady(100.0)).run(duration_s=0.2)
    assert len(samples) == 20 and sent == list(range(20))
    assert [s.at_s for s in samples] == pytest.approx([i / 100 for i in range(20)])
    assert sum(s.status == "UNAVAILABLE" for s in samples) == 5


async def test_latency_counts_from_the_intended_send_time():
    """A stall holds every request due during it; each one's latency includes its wait."""
    gate = asyncio.Event()

    async def send(i: int) -> Reply:
        await gate.wait()  # the system under test stalls until the gate opens
        return Reply()

    load = Load(send, steady(50.0))
    running = asyncio.create_task(load.run(duration_s=0.2))
    await asyncio.sleep(0.4)
    gate.set()
    samples = await running
    assert len(samples) == 10
    for s in samples:  # sent at at_s, answered after 0.4 s: the wait is in the latency
        assert s.latency_s >= 0.4 - s.at_s - 0.01


def test_a_burst_multiplies_the_rate_inside_its_window_only():
    rate = burst(10.0, 5.0, start_s=2.0, length_s=1.0)
    assert [rate(t) for t in (0.0, 1.99, 2.0, 2.5, 2.99, 3.0)] == [10, 10, 50, 50, 50, 10]


def row(stage: str, p99: float | None, requests: int = 100, errors: int = 0) -> SloRow:
    return SloRow(stage, requests, p99, p99, None, "", p50_ms=p99, errors=errors)


def test_the_gate_names_each_broken_budget():
    budgets = SloConfig(total_ms=100, retrieval_ms=20, error_rate=0.02)
    rows = [
        row("total", 150.0, errors=3),
        row("retrieval", 19.0),
        row("edge", 999.0),  # an estimate: shown, not gated
        row("inference", 999.0),
    ]
    assert breaches(rows, budgets) == [
        "total: p99 150.0 ms over its budget of 100 ms",
        "error_rate: 3 of 100 requests failed (3.00%), over its budget of 2.00% ()",
    ]
    assert breaches([row("total", 99.0, errors=2), row("retrieval", 20.0)], budgets) == []
    assert breaches([row("gateway", 1.0)], budgets) == [
        "total: the run has no `total` row (what the clients saw)"
    ]
    assert breaches([row("total", None, requests=0)], budgets) == [
        "total: the run sent no requests"
    ]


def test_a_run_survives_its_csv(tmp_path: Path):
    rows = [
        SloRow("total", 10, 2.5, 3.0, 30000.0, "at the client", p50_ms=1.0, errors=1, rps=5.0),
        SloRow("retrieval", 0, None, None, 250.0, "Search"),
    ]
    path = tmp_path / "run.csv"
    write_csv(path, rows)
    again = read_csv(path)
    assert [(r.stage, r.requests, r.errors, r.p50_ms, r.p99_ms) for r in again] == [
        ("total", 10, 1, 1.0, 3.0),
        ("retrieval", 0, 0, None, None),
    ]


def test_a_bad_csv_is_named_by_line_and_column(tmp_path: Path):
    path = tmp_path / "run.csv"
    write_csv(path, [SloRow("total", 10, 2.5, 3.0, 30000.0)])
    path.write_text(path.read_text().replace("3.000", "fast"))
    with pytest.raises(ValueError, match=r"run.csv:2: p99_ms: not a number: 'fast'"):
        read_csv(path)
    path.write_text("stage,requests\ntotal,3\n")
    with pytest.raises(ValueError, match="missing columns errors, rps"):
        read_csv(path)


def test_ragmesh_gate_exits_non_zero_naming_the_budget(tmp_path: Path):
    path = tmp_path / "run.csv"
    write_csv(path, [SloRow("total", 100, 1.0, 40_000.0, None, p50_ms=1.0)])
    gate = [sys.executable, "-m", "services.cli", "gate", str(path)]
    broken = subprocess.run(gate, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1
    assert "BREACH total: p99 40000.0 ms over its budget of 30000 ms" in broken.stdout
    write_csv(path, [SloRow("total", 100, 1.0, 2.0, None, p50_ms=1.0)])
    kept = subprocess.run(gate, capture_output=True, text=True, timeout=60)
    assert kept.returncode == 0 and "within every budget" in kept.stdout
    path.write_text("nonsense\n")
    bad = subprocess.run(gate, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "missing columns" in bad.stderr

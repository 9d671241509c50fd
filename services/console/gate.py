"""A load run's figures per stage as CSV, and the gate that holds a run to the SLO budgets.

`make loadtest` writes RUN.csv, one row per stage; `ragmesh gate RUN.csv` reads it back and
fails when a stage's p99 is over its budget in the mesh config, or when more of the run's
requests failed than `slo.error_rate` allows: the rollback gate of a release ring.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from services.config.console import STAGES, SloConfig
from services.console.layers import SloRow

# What a run's CSV measures directly. Its edge row is an estimate (edge p99 minus gateway
# p99, two histograms' interpolated quantiles, coarser than the edge's 5 ms budget): shown,
# not gated; `ragmesh slo` and the Prometheus rules watch the edge's budget live.
GATED = ("total", "gateway", "retrieval", "time_to_first_token", "time_per_output_chunk")

COLUMNS = (
    "stage",
    "requests",
    "errors",
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "budget_ms",
    "statuses",
    "note",
)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def write_csv(path: Path, rows: list[SloRow]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(
                [r.stage, r.requests, r.errors, f"{r.rps:.2f}"]
                + [_cell(v) for v in (r.p50_ms, r.p95_ms, r.p99_ms, r.budget_ms)]
                + [r.statuses, r.note]
            )


def read_csv(path: Path) -> list[SloRow]:
    """The rows of a run's CSV; ValueError names the line and column that is wrong."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):

            def number(column: str, row: dict[str, str] = row, line: int = line) -> float | None:
                text = row[column].strip()
                try:
                    value = float(text) if text else None
                except ValueError:
                    raise ValueError(f"{path}:{line}: {column}: not a number: {text!r}") from None
                if value is not None and (math.isnan(value) or value < 0):
                    raise ValueError(f"{path}:{line}: {column}: must be >= 0")
                return value

            rows.append(
                SloRow(
                    row["stage"],
                    int(number("requests") or 0),
                    number("p95_ms"),
                    number("p99_ms"),
                    number("budget_ms"),
                    row["note"],
                    p50_ms=number("p50_ms"),
                    errors=int(number("errors") or 0),
                    rps=number("rps") or 0.0,
                    statuses=row["statuses"],
                )
            )
    return rows


def breaches(rows: list[SloRow], slo: SloConfig) -> list[str]:
    """Every budget the run broke, in words; empty when it kept them all."""
    by_stage = {r.stage: r for r in rows}
    if "total" not in by_stage:
        return ["total: the run has no `total` row (what the clients saw)"]
    broken = []
    for stage in GATED:
        row = by_stage.get(stage)
        budget = slo.budget_ms(stage)
        if row is not None and row.p99_ms is not None and row.p99_ms > budget:
            broken.append(f"{stage}: p99 {row.p99_ms:.1f} ms over its budget of {budget:g} ms")
    total = by_stage["total"]
    if total.requests == 0:
        broken.append("total: the run sent no requests")
    elif (rate := total.errors / total.requests) > slo.error_rate:
        broken.append(
            f"error_rate: {total.errors} of {total.requests} requests failed ({rate:.2%}), "
            f"over its budget of {slo.error_rate:.2%} ({total.statuses})"
        )
    return broken


def table(rows: list[SloRow], gated: tuple[str, ...] = STAGES) -> str:
    """The rows with their verdicts; a stage outside `gated` shows its budget, no verdict."""

    def ms(value: float | None) -> str:
        return f"{value:9.1f}" if value is not None else f"{'-':>9}"

    header = (
        f"  {'stage':20} {'requests':>8} {'errors':>6} {'rps':>7} {'p50 ms':>9} {'p95 ms':>9} "
        f"{'p99 ms':>9} {'budget':>9}"
    )
    lines = [header]
    for r in rows:
        budget = f"{r.budget_ms:9g}" if r.budget_ms is not None else f"{'-':>9}"
        verdict = (
            ""
            if r.budget_ms is None
            else "not gated"
            if r.stage not in gated
            else "ok"
            if r.ok
            else "OVER BUDGET"
        )
        lines.append(
            f"  {r.stage:20} {r.requests:8d} {r.errors:6d} {r.rps:7.1f} {ms(r.p50_ms)} "
            f"{ms(r.p95_ms)} {ms(r.p99_ms)} {budget}  {verdict:11} {r.note}".rstrip()
        )
    return "\n".join(lines)

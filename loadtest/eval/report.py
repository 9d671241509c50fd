"""The evaluation's figures per tier, the table it prints, the CSV and JSON files it writes.

Shares are over the questions they concern: recall@k, correctness, citation precision and
false refusals over the answerable ones, refusal over the unanswerable ones, loops and
finish reasons over every answer; latencies over the calls that succeeded.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.eval.asking import Row
from loadtest.latency import percentile


@dataclass(frozen=True)
class Summary:
    tier: str
    questions: int
    answered: int  # no error and a non-empty answer
    errors: int
    fallback: int  # answered by another tier
    recall_at_1: float | None
    recall_at_k: float | None
    recall_at_k_identifier: float | None
    correct: float | None
    correct_identifier: float | None
    citation_precision: float | None
    groundedness: float | None  # mean of the gateway's scores, over the answers that have one
    grounded_answers: int
    refusal_unanswerable: float | None
    false_refusal: float | None
    loop_rate: float | None
    ttft_p50_ms: float
    ttft_p95_ms: float
    total_p50_ms: float
    total_p95_ms: float
    finish_reasons: dict[str, int] = field(default_factory=dict)


def _share(rows: Sequence[Row], test: Callable[[Row], bool]) -> float | None:
    return sum(map(test, rows)) / len(rows) if rows else None


def summarise(tier: str, rows: Sequence[Row]) -> Summary:
    answerable = [r for r in rows if r.answerable]
    identifier = [r for r in answerable if r.style == "identifier"]
    unanswerable = [r for r in rows if not r.answerable]
    ok = [r for r in rows if not r.error]
    cited = sum(r.citations for r in answerable)
    scores = [r.groundedness for r in rows if r.groundedness is not None]
    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    total = [r.total_ms for r in ok]
    return Summary(
        tier=tier,
        questions=len(rows),
        answered=sum(bool(r.answer.strip()) for r in ok),
        errors=len(rows) - len(ok),
        fallback=sum(r.answered_by != tier for r in ok),
        recall_at_1=_share(answerable, lambda r: r.rank == 1),
        recall_at_k=_share(answerable, lambda r: r.rank > 0),
        recall_at_k_identifier=_share(identifier, lambda r: r.rank > 0),
        correct=_share(answerable, lambda r: bool(r.correct)),
        correct_identifier=_share(identifier, lambda r: bool(r.correct)),
        citation_precision=sum(r.citations_relevant for r in answerable) / cited if cited else None,
        groundedness=statistics.fmean(scores) if scores else None,
        grounded_answers=len(scores),
        refusal_unanswerable=_share(unanswerable, lambda r: r.refused),
        false_refusal=_share(answerable, lambda r: r.refused),
        loop_rate=_share(ok, lambda r: r.looped),
        ttft_p50_ms=percentile(ttft, 0.5),
        ttft_p95_ms=percentile(ttft, 0.95),
        total_p50_ms=percentile(total, 0.5),
        total_p95_ms=percentile(total, 0.95),
        finish_reasons=dict(Counter(r.finish_reason or r.error or "none" for r in rows)),
    )


def _cell(name: str, value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if name.endswith("_ms") else f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {n}" for k, n in sorted(value.items()))
    return str(value)


def table(summaries: Sequence[Summary], k: int) -> str:
    """One line per figure, one column per tier."""
    names = [f.name for f in dataclasses.fields(Summary) if f.name != "tier"]
    width = max(len(n) for n in names) + 2
    lines = [f"{'':{width}}" + "".join(f"{s.tier:>24}" for s in summaries)]
    for name in names:
        label = name.replace("_at_k", f"@{k}").replace("_at_1", "@1")
        cells = "".join(f"{_cell(name, getattr(s, name)):>24}" for s in summaries)
        lines.append(f"{label:{width}}{cells}")
    return "\n".join(lines)


def write(
    out: Path, rows: Sequence[Row], summaries: Sequence[Summary], meta: dict[str, Any]
) -> None:
    """rows.csv (a row per question and tier), summary.csv and eval.json (both, and `meta`)."""
    out.mkdir(parents=True, exist_ok=True)
    row_dicts = [dataclasses.asdict(r) for r in rows]
    summary_dicts = [dataclasses.asdict(s) for s in summaries]
    with (out / "rows.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in dataclasses.fields(Row)])
        writer.writeheader()
        writer.writerows(row_dicts)
    with (out / "summary.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in dataclasses.fields(Summary)])
        writer.writeheader()
        writer.writerows(
            {**s, "finish_reasons": json.dumps(s["finish_reasons"])} for s in summary_dicts
        )
    document = {"meta": meta, "summary": summary_dicts, "rows": row_dicts}
    (out / "eval.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

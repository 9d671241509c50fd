"""Embedder throughput with and without Triton's dynamic batching, side by side.

    python -m loadtest.bench_embedder --seconds 5 --rounds 2

Starts Triton alone on free ports with two copies of the embedder: as configured
(dynamic batching) and with dynamic batching removed. Clients send one text per request
(distinct sentences of the sample corpus, so no cache can help) at concurrency 1, 8 and
32; rounds alternate between the two models, and the table reports the median.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton

from services.client.sample_corpus import harvest
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.retrieval.chunking import sentences
from services.supervisor.launcher import ROOT, Mesh, isolated

CONCURRENCY = (1, 8, 32)
MODELS = {"batched": "embedder", "unbatched": "embedder_unbatched"}


def model_repository(target: Path) -> Path:
    """The embedder twice: as shipped, and without dynamic batching (nor response cache)."""
    source = ROOT / "triton_models" / "cpu" / "embedder"
    for name in MODELS.values():
        shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        config = (target / name / "config.pbtxt").read_text()
        config = re.sub(r"response_cache \{[^}]*\}", "", config)
        if name != "embedder":
            config = re.sub(r"dynamic_batching \{[^}]*\}", "", config)
            config = config.replace('name: "embedder"', f'name: "{name}"')
        (target / name / "config.pbtxt").write_text(config)
    return target


async def drive(url: str, model: str, texts: list[str], concurrency: int, seconds: float) -> float:
    """Texts per second that `concurrency` clients get through in `seconds`."""
    client = triton.InferenceServerClient(url)
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            data = np.array([[texts[i % len(texts)].encode()]], dtype=np.object_)
            tensor = triton.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(data)
            await client.infer(model, [tensor])
            done += 1
            i += concurrency

    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.monotonic() - started
    await client.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_embedder")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = [s for p in harvest(work / "corpus") for s in sentences(p.read_text())]
        base = isolated(first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1), work / "data")
        repo = model_repository(work / "models")
        triton_config = dataclasses.replace(base.triton, model_repository=str(repo))
        config = dataclasses.replace(base, triton=triton_config)
        with Mesh(config, planes=("triton",)):
            url = f"127.0.0.1:{config.triton.grpc_port}"
            results: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):
                for c in CONCURRENCY:
                    for label, model in MODELS.items():
                        rate = asyncio.run(drive(url, model, texts, c, args.seconds))
                        results.setdefault((label, c), []).append(rate)
    print(f"embedder, one text per request, median of {args.rounds} rounds of {args.seconds}s")
    print(f"{'concurrency':>11} {'batched/s':>10} {'unbatched/s':>12} {'ratio':>6}")
    for c in CONCURRENCY:
        batched = statistics.median(results[("batched", c)])
        unbatched = statistics.median(results[("unbatched", c)])
        print(f"{c:>11} {batched:>10.1f} {unbatched:>12.1f} {batched / unbatched:>6.2f}")


if __name__ == "__main__":
    main()

"""Renders the TensorRT-LLM model repository templates in triton_models/trtllm for a GPU node.

The templates follow TensorRT-LLM's `all_models/inflight_batcher_llm` layout (preprocessing,
tensorrt_llm, postprocessing, ensemble, tensorrt_llm_bls) with NVIDIA's `${name}` placeholders;
`ensemble` and `tensorrt_llm_bls` take the gateway's tier contract. Rendering copies the tree and
fills every placeholder of every config.pbtxt; it refuses a placeholder left unfilled and a value
that no template uses, so a typo cannot pass silently.

    python -m services.triton.trtllm --engine-dir /engines/llama --tokenizer-dir /models/llama \\
        --max-batch-size 64 --out /models/premium
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "triton_models" / "trtllm"
CONFIG = "config.pbtxt"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
BATCHING_STRATEGIES = ("inflight_fused_batching", "inflight_batching")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


class RenderError(ValueError):
    """The values do not fit the templates."""


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _path(name: str, value: str | Path) -> str:
    text = str(value)
    if not text or any(c in text for c in '"\\\n'):
        raise RenderError(
            f"{name}: must be a non-empty path without quotes, backslashes or newlines"
        )
    return text


def _at_least(name: str, value: int, minimum: int) -> str:
    if value < minimum:
        raise RenderError(f"{name}: must be >= {minimum}, got {value}")
    return str(value)


def values_for(
    engine_dir: str | Path,
    tokenizer_dir: str | Path,
    max_batch_size: int,
    decoupled: bool = True,
    *,
    max_beam_width: int = 1,
    kv_cache_free_gpu_mem_fraction: float = 0.9,
    max_queue_delay_microseconds: int = 0,
    preprocessing_instance_count: int = 1,
    postprocessing_instance_count: int = 1,
    bls_instance_count: int = 1,
    batching_strategy: str = "inflight_fused_batching",
    batch_scheduler_policy: str = "guaranteed_no_evict",
    enable_kv_cache_reuse: bool = False,
    exclude_input_in_output: bool = True,
    add_special_tokens: bool = True,
    skip_special_tokens: bool = True,
) -> dict[str, str]:
    """Every value the templates take. Paths are as the Triton container sees them.

    max_batch_size should equal the engine's `trtllm-build --max_batch_size`; decoupled is what
    streaming needs; exclude_input_in_output must stay true for the postprocessing to return
    the completion only.
    """
    if not 0.0 < kv_cache_free_gpu_mem_fraction <= 1.0:
        raise RenderError(
            "kv_cache_free_gpu_mem_fraction: must be in (0, 1], "
            f"got {kv_cache_free_gpu_mem_fraction}"
        )
    if batching_strategy not in BATCHING_STRATEGIES:
        raise RenderError(f"batching_strategy: one of {', '.join(BATCHING_STRATEGIES)}")
    if batch_scheduler_policy not in SCHEDULER_POLICIES:
        raise RenderError(f"batch_scheduler_policy: one of {', '.join(SCHEDULER_POLICIES)}")
    return {
        "engine_dir": _path("engine_dir", engine_dir),
        "tokenizer_dir": _path("tokenizer_dir", tokenizer_dir),
        "triton_max_batch_size": _at_least("max_batch_size", max_batch_size, 1),
        "decoupled_mode": _bool(decoupled),
        "max_beam_width": _at_least("max_beam_width", max_beam_width, 1),
        "kv_cache_free_gpu_mem_fraction": repr(float(kv_cache_free_gpu_mem_fraction)),
        "max_queue_delay_microseconds": _at_least(
            "max_queue_delay_microseconds", max_queue_delay_microseconds, 0
        ),
        "preprocessing_instance_count": _at_least(
            "preprocessing_instance_count", preprocessing_instance_count, 1
        ),
        "postprocessing_instance_count": _at_least(
            "postprocessing_instance_count", postprocessing_instance_count, 1
        ),
        "bls_instance_count": _at_least("bls_instance_count", bls_instance_count, 1),
        "batching_strategy": batching_strategy,
        "batch_scheduler_policy": batch_scheduler_policy,
        "enable_kv_cache_reuse": _bool(enable_kv_cache_reuse),
        "exclude_input_in_output": _bool(exclude_input_in_output),
        "add_special_tokens": _bool(add_special_tokens),
        "skip_special_tokens": _bool(skip_special_tokens),
    }


def placeholders(template_dir: Path) -> dict[Path, set[str]]:
    """The placeholder names of each config.pbtxt under template_dir, by path relative to it."""
    return {
        path.relative_to(template_dir): set(PLACEHOLDER.findall(path.read_text()))
        for path in sorted(template_dir.rglob(CONFIG))
    }


def render(
    template_dir: Path, out_dir: Path, values: Mapping[str, str], *, overwrite: bool = False
) -> list[Path]:
    """Copies template_dir's models into out_dir with every `${name}` of each config.pbtxt filled.

    Checks everything before writing: raises RenderError naming the placeholders no value fills
    (and the files that hold them) and the values no template uses, and FileExistsError where a
    model directory exists in out_dir, unless overwrite (which replaces it). Returns the files
    written, sorted.
    """
    found = placeholders(template_dir)
    if not found:
        raise RenderError(f"{template_dir}: no {CONFIG} templates")
    used = set().union(*found.values())
    problems: list[str] = []
    for path, names in found.items():
        if missing := sorted(names - values.keys()):
            problems.append(f"{path}: no value for {', '.join('${' + n + '}' for n in missing)}")
    if unknown := sorted(values.keys() - used):
        problems.append(f"values no template uses: {', '.join(unknown)}")
    if problems:
        raise RenderError("; ".join(problems))
    for key, value in values.items():
        if PLACEHOLDER.search(value) or "\n" in value:
            raise RenderError(f"{key}: a value may not hold a placeholder or a newline")

    models = sorted({path.parts[0] for path in found})
    for model in models:
        if (out_dir / model).exists() and not overwrite:
            raise FileExistsError(f"{out_dir / model} exists (overwrite replaces it)")
    written: list[Path] = []
    for model in models:
        target = out_dir / model
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(template_dir / model, target, ignore=_SKIP)
        for config in target.rglob(CONFIG):
            text = PLACEHOLDER.sub(lambda m: values[m.group(1)], config.read_text())
            config.write_text(text)
        written += [p for p in target.rglob("*") if p.is_file()]
    return sorted(written)


def main(argv: Sequence[str] | None = None, prog: str = "python -m services.triton.trtllm") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Render the TensorRT-LLM templates (triton_models/trtllm) for a GPU node.",
    )
    parser.add_argument("--engine-dir", required=True, help="trtllm-build's --output_dir")
    parser.add_argument("--tokenizer-dir", required=True, help="the Hugging Face checkpoint")
    parser.add_argument(
        "--max-batch-size", type=int, required=True, help="the engine's --max_batch_size"
    )
    parser.add_argument("--out", type=Path, required=True, help="the model repository to write")
    parser.add_argument("--templates", type=Path, default=TEMPLATE_DIR)
    parser.add_argument(
        "--no-decoupled", action="store_true", help="no streaming: one response per request"
    )
    parser.add_argument("--max-beam-width", type=int, default=1)
    parser.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.9)
    parser.add_argument("--max-queue-delay-microseconds", type=int, default=0)
    parser.add_argument("--preprocessing-instance-count", type=int, default=1)
    parser.add_argument("--postprocessing-instance-count", type=int, default=1)
    parser.add_argument("--bls-instance-count", type=int, default=1)
    parser.add_argument(
        "--batching-strategy", choices=BATCHING_STRATEGIES, default=BATCHING_STRATEGIES[0]
    )
    parser.add_argument(
        "--batch-scheduler-policy", choices=SCHEDULER_POLICIES, default=SCHEDULER_POLICIES[0]
    )
    parser.add_argument("--enable-kv-cache-reuse", action="store_true")
    parser.add_argument("--force", action="store_true", help="replace existing model directories")
    args = parser.parse_args(argv)
    try:
        values = values_for(
            args.engine_dir,
            args.tokenizer_dir,
            args.max_batch_size,
            not args.no_decoupled,
            max_beam_width=args.max_beam_width,
            kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
            max_queue_delay_microseconds=args.max_queue_delay_microseconds,
            preprocessing_instance_count=args.preprocessing_instance_count,
            postprocessing_instance_count=args.postprocessing_instance_count,
            bls_instance_count=args.bls_instance_count,
            batching_strategy=args.batching_strategy,
            batch_scheduler_policy=args.batch_scheduler_policy,
            enable_kv_cache_reuse=args.enable_kv_cache_reuse,
        )
        written = render(args.templates, args.out, values, overwrite=args.force)
    except (RenderError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        if path.name == CONFIG:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

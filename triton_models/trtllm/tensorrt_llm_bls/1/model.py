"""The premium tier as a BLS model: preprocessing -> tensorrt_llm -> postprocessing.

Runs inside Triton's Python backend. Decoupled (the usual configuration), each request streams
on a worker thread: every response carries the text new since the previous one. The token ids
so far are decoded as a whole and only the new suffix is sent, so tokens that decode differently
in context (SentencePiece's leading spaces, multi-byte characters split across tokens) come out
right; a suffix ending in an incomplete character waits for the next token. Counts are running
totals; the last response says why generation ended (`finish_reason`: "length" when the engine
returned the max_tokens asked of it, else "stop": its end id or a stop word). One prompt per
request (batch 1), as the gateway sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# Our input -> preprocessing's input.
PRE_INPUTS = {
    "text_input": "QUERY",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT",
    "end_id": "END_ID",
    "pad_id": "PAD_ID",
}
# preprocessing's output -> tensorrt_llm's input.
LLM_FROM_PRE = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len",
    "BAD_WORDS_IDS": "bad_words_list",
    "STOP_WORDS_IDS": "stop_words_list",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
}
# Our input -> tensorrt_llm's input, passed through when the client sent it.
LLM_FROM_REQUEST = {
    "temperature": "temperature",
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "random_seed": "random_seed",
}


def _check(response: Any, model: str) -> Any:
    if response.has_error():
        raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
    return response


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.llm = str(config["parameters"]["tensorrt_llm_model_name"]["string_value"])
        self.decoupled = bool(pb_utils.using_decoupled_model_transaction_policy(config))
        # As many concurrent streams as the engine batches.
        workers = max(1, int(config.get("max_batch_size", 1)))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bls")

    def _preprocess(self, request: Any) -> tuple[list[Any], int]:
        inputs = []
        for ours, theirs in PRE_INPUTS.items():
            tensor = pb_utils.get_input_tensor_by_name(request, ours)
            if tensor is not None:
                inputs.append(pb_utils.Tensor(theirs, tensor.as_numpy()))
        if inputs[0].as_numpy().shape[0] != 1:
            raise pb_utils.TritonModelException("tensorrt_llm_bls takes one prompt per request")
        response = pb_utils.InferenceRequest(
            model_name="preprocessing",
            inputs=inputs,
            requested_output_names=list(LLM_FROM_PRE),
        ).exec()
        _check(response, "preprocessing")
        outputs = [
            pb_utils.Tensor(theirs, pb_utils.get_output_tensor_by_name(response, ours).as_numpy())
            for ours, theirs in LLM_FROM_PRE.items()
        ]
        prompt_len = pb_utils.get_output_tensor_by_name(response, "REQUEST_INPUT_LEN").as_numpy()
        return outputs, int(prompt_len.reshape(-1)[0])

    def _decode(self, ids: list[int]) -> str:
        response = pb_utils.InferenceRequest(
            model_name="postprocessing",
            inputs=[
                pb_utils.Tensor("TOKENS_BATCH", np.array([[ids]], dtype=np.int32)),
                pb_utils.Tensor("SEQUENCE_LENGTH", np.array([[len(ids)]], dtype=np.int32)),
            ],
            requested_output_names=["OUTPUT"],
        ).exec()
        _check(response, "postprocessing")
        text = pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy().reshape(-1)[0]
        return text.decode() if isinstance(text, bytes) else str(text)

    def _generate(self, request: Any) -> Iterator[list[Any]]:
        """Output tensors for each delta of text; the last one flushes whatever is left."""
        inputs, prompt_len = self._preprocess(request)
        for ours, theirs in LLM_FROM_REQUEST.items():
            tensor = pb_utils.get_input_tensor_by_name(request, ours)
            if tensor is not None:
                inputs.append(pb_utils.Tensor(theirs, tensor.as_numpy()))
        stream = pb_utils.get_input_tensor_by_name(request, "stream")
        streaming = self.decoupled and stream is not None and bool(stream.as_numpy().any())
        inputs.append(pb_utils.Tensor("streaming", np.array([[streaming]], dtype=np.bool_)))
        llm_request = pb_utils.InferenceRequest(
            model_name=self.llm,
            inputs=inputs,
            requested_output_names=["output_ids", "sequence_length"],
        )
        responses = llm_request.exec(decoupled=True) if self.decoupled else [llm_request.exec()]

        max_tokens = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy().max())
        ids: list[int] = []
        sent = ""

        def delta(final: bool) -> list[Any] | None:
            """The text new since the last delta; the final one always, with the reason."""
            nonlocal sent
            text = self._decode(ids) if ids else ""
            new = ""
            # Not while earlier text decodes differently or a character is incomplete.
            if text.startswith(sent) and (final or not text.endswith("\ufffd")):
                new, sent = text[len(sent) :], text
            if not new and not final:
                return None
            reason = ("length" if len(ids) >= max_tokens else "stop") if final else ""
            return [
                pb_utils.Tensor("text_output", np.array([[new.encode()]], dtype=np.object_)),
                pb_utils.Tensor("prompt_tokens", np.array([[prompt_len]], dtype=np.int32)),
                pb_utils.Tensor("completion_tokens", np.array([[len(ids)]], dtype=np.int32)),
                pb_utils.Tensor("finish_reason", np.array([[reason.encode()]], dtype=np.object_)),
            ]

        for response in responses:
            if self.decoupled and request.is_cancelled():
                cancel = getattr(responses, "cancel", None)
                if cancel is not None:
                    cancel()  # stops generation where the Python backend supports it
                raise pb_utils.TritonModelException("request cancelled")
            output_ids = pb_utils.get_output_tensor_by_name(
                _check(response, self.llm), "output_ids"
            )
            if output_ids is None:
                continue  # the empty final response of a decoupled model
            lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
            ids += output_ids.as_numpy()[0, 0, : int(lengths[0, 0])].tolist()
            if streaming and (tensors := delta(final=False)) is not None:
                yield tensors
        last = delta(final=True)
        assert last is not None
        yield last

    def _stream(self, request: Any) -> None:
        sender = request.get_response_sender()
        pending: list[Any] | None = None
        try:
            for tensors in self._generate(request):
                if pending is not None:
                    sender.send(pb_utils.InferenceResponse(output_tensors=pending))
                pending = tensors
            # The last text goes with the final flag, so clients need no empty final response.
            sender.send(
                pb_utils.InferenceResponse(output_tensors=pending or []),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        except Exception as exc:
            error = pb_utils.TritonError(f"tensorrt_llm_bls: {exc}")
            sender.send(
                pb_utils.InferenceResponse(output_tensors=[], error=error),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )

    def _whole(self, request: Any) -> Any:
        try:
            deltas = list(self._generate(request))
            return pb_utils.InferenceResponse(output_tensors=deltas[-1])
        except Exception as exc:
            error = pb_utils.TritonError(f"tensorrt_llm_bls: {exc}")
            return pb_utils.InferenceResponse(output_tensors=[], error=error)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if not self.decoupled:
            return [self._whole(request) for request in requests]
        for request in requests:
            self.pool.submit(self._stream, request)
        return None

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)

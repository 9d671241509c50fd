"""Text -> token ids for the `tensorrt_llm` model (runs inside Triton's Python backend).

The gateway sends a finished prompt, so this encodes it as it is: no chat template. Stop and bad
words become TensorRT-LLM's word lists: [2, n], row 0 the words' ids end to end, row 1 the end
offset of each word, padded with 0 and -1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

Ids = npt.NDArray[np.int32]


def _parameter(config: dict[str, Any], key: str) -> str:
    return str(config["parameters"][key]["string_value"])


def _strings(tensor: Any) -> list[list[str]]:
    """A [batch, n] BYTES tensor as lists of str, empty strings dropped."""
    rows: list[list[str]] = []
    for row in tensor.as_numpy():
        items = [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(row)]
        rows.append([s for s in items if s])
    return rows


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(_parameter(config, "tokenizer_dir"))
        self.add_special_tokens = _parameter(config, "add_special_tokens").lower() == "true"
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.end_id = int(eos) if eos is not None else 0
        self.pad_id = int(pad) if pad is not None else self.end_id

    def _word_list(self, rows: Sequence[Sequence[str]]) -> Ids:
        lists: list[tuple[list[int], list[int]]] = []
        for words in rows:
            ids: list[int] = []
            offsets: list[int] = []
            for word in words:
                ids += self.tokenizer.encode(word, add_special_tokens=False)
                offsets.append(len(ids))
            lists.append((ids, offsets))
        width = max([1] + [max(len(i), len(o)) for i, o in lists])
        out = np.zeros((len(lists), 2, width), dtype=np.int32)
        out[:, 1, :] = -1
        for b, (ids, offsets) in enumerate(lists):
            out[b, 0, : len(ids)] = ids
            out[b, 1, : len(offsets)] = offsets
        return out

    def _optional_ids(self, request: Any, name: str, default: int, batch: int) -> Ids:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.full((batch, 1), default, dtype=np.int32)
        return tensor.as_numpy().astype(np.int32).reshape(batch, 1)

    def _words(self, request: Any, name: str, batch: int) -> Ids:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return self._word_list(_strings(tensor) if tensor is not None else [[]] * batch)

    def _one(self, request: Any) -> Any:
        queries = _strings(pb_utils.get_input_tensor_by_name(request, "QUERY"))
        batch = len(queries)
        encoded = [
            self.tokenizer.encode(q[0] if q else "", add_special_tokens=self.add_special_tokens)
            for q in queries
        ]
        lengths = np.array([[len(ids)] for ids in encoded], dtype=np.int32)
        input_ids = np.full((batch, max(1, int(lengths.max()))), self.pad_id, dtype=np.int32)
        for b, ids in enumerate(encoded):
            input_ids[b, : len(ids)] = ids
        output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
        outputs = {
            "INPUT_ID": input_ids,
            "REQUEST_INPUT_LEN": lengths,
            "REQUEST_OUTPUT_LEN": output_len.astype(np.int32).reshape(batch, 1),
            "BAD_WORDS_IDS": self._words(request, "BAD_WORDS_DICT", batch),
            "STOP_WORDS_IDS": self._words(request, "STOP_WORDS_DICT", batch),
            "OUT_END_ID": self._optional_ids(request, "END_ID", self.end_id, batch),
            "OUT_PAD_ID": self._optional_ids(request, "PAD_ID", self.pad_id, batch),
        }
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # one bad request must not fail the others
                error = pb_utils.TritonError(f"preprocessing: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

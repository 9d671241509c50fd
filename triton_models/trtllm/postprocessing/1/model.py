"""Token ids from the `tensorrt_llm` model -> text (runs inside Triton's Python backend).

Decodes the first beam of each request: TOKENS_BATCH [batch, beams, tokens] cut to
SEQUENCE_LENGTH [batch, beams]. The engine is configured with exclude_input_in_output, so these
are the completion's tokens only (when streaming, the ones new since the last response).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        parameters = json.loads(args["model_config"])["parameters"]
        self.tokenizer = AutoTokenizer.from_pretrained(parameters["tokenizer_dir"]["string_value"])
        self.skip_special = parameters["skip_special_tokens"]["string_value"].lower() == "true"

    def _one(self, request: Any) -> Any:
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        texts = [
            self.tokenizer.decode(
                tokens[b, 0, : int(lengths[b, 0])].tolist(),
                skip_special_tokens=self.skip_special,
            ).encode()
            for b in range(tokens.shape[0])
        ]
        output = np.array(texts, dtype=np.object_).reshape(len(texts), 1)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", output)])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # one bad request must not fail the others
                error = pb_utils.TritonError(f"postprocessing: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

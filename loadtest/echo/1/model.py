"""The echo model: each request's text_input back as text_output, FINAL in one response,
finish_reason "stop"."""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
            words = len(text.reshape(-1)[0].split())
            count = np.array([[words]], dtype=np.int32)
            response = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("text_output", text.reshape(1, -1)),
                    pb_utils.Tensor("prompt_tokens", count),
                    pb_utils.Tensor("completion_tokens", count),
                    pb_utils.Tensor("finish_reason", np.array([[b"stop"]], dtype=np.object_)),
                ]
            )
            request.get_response_sender().send(response, flags=_FINAL)

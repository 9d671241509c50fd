"""The python-backend side of the contract, shared by the models of triton_models/cpu/.

Reading a request's input tensors (a client's mistake is a RequestError whose message starts
with the tensor's name and a colon, `max_tokens: must be >= 1, got 0`, which the gateway reads
as INVALID_ARGUMENT naming its own field), answering with the contract's output tensors, and
turning any failure into that request's error response. Only the models import this module:
it needs Triton's `triton_python_backend_utils`, which exists only inside the backend's stub.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from services.contract.tensors import OUTPUTS

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_OUTPUT_DTYPES = [(t.name, pb_utils.triton_string_to_numpy(t.config_type)) for t in OUTPUTS]


class RequestError(ValueError):
    """A client error in one request: becomes that request's error response."""


def param(config: dict[str, Any], key: str, default: str = "") -> str:
    """A string parameter of the model's config; `default` where it is absent or empty."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return str(value) if value != "" else default


def decode(raw: object) -> str:
    """One element of a BYTES tensor as text; UnicodeDecodeError or TypeError if it is not."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8")
    if isinstance(raw, str):
        return raw
    raise TypeError(f"expected bytes, got {type(raw).__name__}")


def scalar(request: Any, name: str) -> Any | None:
    """The one value of an input tensor, or None where the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name}: must hold exactly one value per request, got {values.size}")
    return values[0]


def strings(request: Any, name: str) -> list[str]:
    """The non-empty texts of a BYTES input tensor ([] where the request left it out)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [text for text in map(decode, tensor.as_numpy().reshape(-1)) if text]


def text_input(request: Any) -> str:
    """The prompt; bytes that are not UTF-8 become U+FFFD."""
    raw = scalar(request, "text_input")
    if raw is None:
        raise RequestError("text_input: is required")
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def max_tokens(request: Any) -> int:
    value = scalar(request, "max_tokens")
    if value is None:
        raise RequestError("max_tokens: is required")
    if int(value) < 1:
        raise RequestError(f"max_tokens: must be >= 1, got {int(value)}")
    return int(value)


def stream(request: Any) -> bool:
    """Whether to answer in deltas; one response where the request left it out."""
    value = scalar(request, "stream")
    return bool(value) if value is not None else False


def response(text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str = "") -> Any:
    """One response of the contract's outputs; `finish_reason` on the last one only ("")."""
    values = (text.encode("utf-8"), prompt_tokens, completion_tokens, finish_reason.encode())
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(name, np.array([[value]], dtype=dtype))
            for (name, dtype), value in zip(_OUTPUT_DTYPES, values, strict=True)
        ]
    )


def error_response(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def send_error(sender: Any, message: str, model: str) -> None:
    """The request's last response: its error (logged, never raised, if it cannot be sent)."""
    try:
        sender.send(error_response(message), flags=FINAL)
    except Exception as exc:
        pb_utils.Logger.log_error(f"{model} could not send an error response: {exc!r}")


def serve(model: str, request: Any, generate: Callable[[Any, Any], None]) -> None:
    """Run `generate(request, sender)` for a decoupled model; a RequestError becomes the
    request's error response, any other failure an internal error that names only its type
    (exception messages may quote the prompt), logged with its frames."""
    sender = request.get_response_sender()
    try:
        generate(request, sender)
    except RequestError as exc:
        send_error(sender, str(exc), model)
    except Exception as exc:  # never let one request take the model down
        frames = "".join(traceback.format_tb(exc.__traceback__))
        pb_utils.Logger.log_error(f"{model} request failed: {type(exc).__name__}\n{frames}")
        send_error(sender, f"{model} internal error: {type(exc).__name__}", model)

"""The gateway's Triton requests and responses in Triton's raw tensor encoding."""

from __future__ import annotations

import struct

import pytest
from tritonclient.grpc import service_pb2

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from services.triton import llm


def test_the_triton_request_carries_raw_tensors_and_the_stream_flag() -> None:
    request = llm._request("economy", "2", "Hi ✓", 16, 0.5, stream=False)
    assert (request.model_name, request.model_version) == ("economy", "2")
    names = [(t.name, t.datatype, list(t.shape)) for t in request.inputs]
    assert names == [
        ("text_input", "BYTES", [1, 1]),
        ("max_tokens", "INT32", [1, 1]),
        ("stream", "BOOL", [1, 1]),
        ("temperature", "FP32", [1, 1]),
    ]
    text, max_tokens, stream, temperature = request.raw_input_contents
    assert text == len("Hi ✓".encode()).to_bytes(4, "little") + "Hi ✓".encode()
    assert struct.unpack("<i", max_tokens) == (16,) and stream == b"\x00"
    assert struct.unpack("<f", temperature) == (0.5,)
    assert llm._request("economy", "", "x", 1, 0.0, stream=True).raw_input_contents[2] == b"\x01"


def test_a_response_is_read_from_its_raw_outputs() -> None:
    response = service_pb2.ModelInferResponse(model_version="3")
    for name in ("text_output", "prompt_tokens", "completion_tokens"):
        response.outputs.add(name=name)
    parts = [b"Brew ", "at 80 °C".encode()]
    text = b"".join(len(p).to_bytes(4, "little") + p for p in parts)
    response.raw_output_contents.extend([text, struct.pack("<i", 12), struct.pack("<i", 4)])
    assert llm._delta(response) == llm.Delta("Brew at 80 °C", 12, 4, "3")
    assert llm._delta(service_pb2.ModelInferResponse()) == llm.Delta("", -1, -1, "")


def test_the_finish_reason_is_read_from_the_models_output() -> None:
    response = service_pb2.ModelInferResponse(model_version="1")
    for name in ("text_output", "finish_reason"):
        response.outputs.add(name=name)
    response.raw_output_contents.extend(
        [(1).to_bytes(4, "little") + b".", (6).to_bytes(4, "little") + b"length"]
    )
    assert llm._delta(response).finish_reason == "length"


@pytest.mark.parametrize(
    ("message", "version", "kind", "field"),
    [
        # A model's own check of an input: the request's field, INVALID_ARGUMENT.
        ("max_tokens: must be >= 1, got 0", "", InvalidArgument, "max_tokens"),
        ("text_input: 2100 tokens with the chat template, over ...", "", InvalidArgument, "query"),
        ("temperature: must be >= 0, got -1.0", "", InvalidArgument, "temperature"),
        # Triton has no such version: the pinned version is the request's mistake.
        (
            "Request for unknown model: 'standard' version 99 is not found",
            "99",
            NotFound,
            "model_version",
        ),
        (
            "failed to get model version from specified version string '99999999999999999999'",
            "99999999999999999999",
            InvalidArgument,
            "model_version",
        ),
        # The model itself is gone (unloaded): the server's state, another tier may answer.
        ("Request for unknown model: 'standard' is not found", "", Unavailable, ""),
        (
            "Request for unknown model: 'standard' version 1 is not at ready state",
            "1",
            Unavailable,
            "",
        ),
        ("Stub process 'standard_0_0' is not healthy.", "", Unavailable, ""),
        ("Deadline Exceeded", "", DeadlineExceeded, ""),
    ],
)
def test_model_errors_are_told_apart_by_cause(message, version, kind, field) -> None:
    error = llm._error(message, "standard", version)
    assert type(error) is kind and error.field == field
    if field:
        assert error.message.startswith(f"{field}: ")

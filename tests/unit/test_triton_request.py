"""The gateway's Triton requests and responses in Triton's raw tensor encoding."""

from __future__ import annotations

import struct

from tritonclient.grpc import service_pb2

from services.gateway import llm


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

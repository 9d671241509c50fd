"""The Triton client's requests and responses in Triton's raw tensor encoding: generation's
(the gateway's) and embeddings' (retrieval's)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from services.triton import embedder, llm
from services.triton.client import decode_bytes, encode_bytes


def test_the_triton_request_carries_raw_tensors_and_the_stream_flag() -> None:
    request = llm._request("economy", "2", "Hi ✓", llm.Sampling(16, 0.5, 0.9), stream=False)
    assert (request.model_name, request.model_version) == ("economy", "2")
    names = [(t.name, t.datatype, list(t.shape)) for t in request.inputs]
    assert names == [
        ("text_input", "BYTES", [1, 1]),
        ("max_tokens", "INT32", [1, 1]),
        ("stream", "BOOL", [1, 1]),
        ("temperature", "FP32", [1, 1]),
        ("top_p", "FP32", [1, 1]),
    ]
    text, max_tokens, stream, temperature, top_p = request.raw_input_contents
    assert text == len("Hi ✓".encode()).to_bytes(4, "little") + "Hi ✓".encode()
    assert struct.unpack("<i", max_tokens) == (16,) and stream == b"\x00"
    assert struct.unpack("<f", temperature) == (0.5,)
    assert struct.unpack("<f", top_p) == pytest.approx((0.9,))
    streamed = llm._request("economy", "", "x", llm.Sampling(1), stream=True)
    assert streamed.raw_input_contents[2] == b"\x01"
    # The defaults travel as nothing: a model with the four required inputs alone serves it.
    assert [t.name for t in streamed.inputs] == [
        "text_input",
        "max_tokens",
        "stream",
        "temperature",
    ]


def test_a_seed_and_stop_strings_travel_only_when_set() -> None:
    sampling = llm.Sampling(8, stop=("\n\n", "END"), seed=2**40 + 7)
    request = llm._request("standard", "", "x", sampling, stream=True)
    inputs = {t.name: (t.datatype, list(t.shape)) for t in request.inputs}
    assert inputs["random_seed"] == ("UINT64", [1, 1])
    assert inputs["stop_words"] == ("BYTES", [1, 2])
    raw = dict(zip((t.name for t in request.inputs), request.raw_input_contents, strict=True))
    assert struct.unpack("<Q", raw["random_seed"]) == (2**40 + 7,)
    assert decode_bytes(raw["stop_words"]) == [b"\n\n", b"END"]


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


def test_bytes_tensors_are_length_prefixed_elements() -> None:
    items = [b"", "é ✓".encode(), b"x" * 300]
    raw = encode_bytes(items)
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == (6).to_bytes(4, "little")
    assert decode_bytes(raw) == items and decode_bytes(b"") == []


def test_the_embedding_request_carries_one_raw_bytes_tensor_of_the_batch() -> None:
    request = embedder._request("embedder", ["tea", "Grüner Tee"])
    assert (request.model_name, request.model_version, request.id) == ("embedder", "", "")
    (text,) = request.inputs
    assert (text.name, text.datatype, list(text.shape)) == ("text", "BYTES", [2, 1])
    assert [o.name for o in request.outputs] == ["embedding"]
    (raw,) = request.raw_input_contents
    tea, green = b"tea", "Grüner Tee".encode()
    assert raw == len(tea).to_bytes(4, "little") + tea + len(green).to_bytes(4, "little") + green
    # No list-typed contents beside the raw ones: Triton takes one or the other.
    assert not text.HasField("contents")


def _embedding_response(rows: np.ndarray, datatype: str = "FP32", name: str = "embedding"):
    response = service_pb2.ModelInferResponse(model_name="embedder", model_version="1")
    response.outputs.add(name=name, datatype=datatype, shape=rows.shape)
    response.raw_output_contents.append(rows.astype("<f4").tobytes())
    return response


def test_the_embedding_response_is_read_from_its_raw_output() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    vectors = embedder._vectors(_embedding_response(rows), 2, 3)
    assert vectors.dtype == np.float32 and vectors.shape == (2, 3)
    assert np.array_equal(vectors, rows)


@pytest.mark.parametrize(
    "response",
    [
        _embedding_response(np.zeros((3, 3), np.float32)),  # a row too many
        _embedding_response(np.zeros((2, 4), np.float32)),  # another model's dimension
        _embedding_response(np.zeros((2, 3), np.float32), datatype="FP16"),
        _embedding_response(np.zeros((2, 3), np.float32), name="other"),
        service_pb2.ModelInferResponse(),
    ],
)
def test_an_embedding_response_of_another_shape_is_unavailable(response) -> None:
    with pytest.raises(Unavailable, match="unexpected shape"):
        embedder._vectors(response, 2, 3)

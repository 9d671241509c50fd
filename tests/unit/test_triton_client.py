"""TritonClient against an in-process stand-in for Triton's gRPC API: embeddings and generation
on one channel's stub, readiness, and the reload of a model whose stub process died."""

from __future__ import annotations

import asyncio
import struct

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common.errors import DeadlineExceeded, Unavailable
from services.triton.client import TritonClient, decode_bytes, encode_bytes
from services.triton.embedder import TritonEmbedder
from services.triton.llm import Delta, Sampling, TritonLLM

DIM = 4
DEAD = "Stub process 'embedder_0_0' is not healthy."


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Embeds a text as [len, 1, 0, 0]; answers a prompt reversed; fails as `failure` says."""

    def __init__(self) -> None:
        self.ready = {"embedder": True, "llm": True}
        self.batches: list[int] = []
        self.control: list[str] = []
        self.failure = ""  # "slow", "dead" (embeddings), "gone" (generation) or ""

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.ready.get(request.name, False))

    async def RepositoryModelUnload(self, request, context):
        self.control.append(f"unload {request.model_name}")
        self.ready[request.model_name] = False
        return service_pb2.RepositoryModelUnloadResponse()

    async def RepositoryModelLoad(self, request, context):
        self.control.append(f"load {request.model_name}")
        self.ready[request.model_name] = True
        return service_pb2.RepositoryModelLoadResponse()

    async def ModelInfer(self, request, context):
        if self.failure == "slow":
            await asyncio.sleep(1)
        if self.failure == "dead":
            await context.abort(grpc.StatusCode.INTERNAL, DEAD)
        texts = decode_bytes(request.raw_input_contents[0])
        self.batches.append(len(texts))
        rows = np.array([[len(t), 1, 0, 0] for t in texts], dtype="<f4")
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        response.outputs.add(name="embedding", datatype="FP32", shape=rows.shape)
        response.raw_output_contents.append(rows.tobytes())
        return response

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            if self.failure == "gone":
                message = f"Request for unknown model: '{request.model_name}' is not found"
                yield service_pb2.ModelStreamInferResponse(error_message=message)
                return
            (prompt,) = decode_bytes(request.raw_input_contents[0])
            response = service_pb2.ModelInferResponse(model_version="1")
            for name in ("text_output", "prompt_tokens", "completion_tokens"):
                response.outputs.add(name=name)
            response.raw_output_contents.extend(
                [encode_bytes([prompt[::-1]]), struct.pack("<i", 3), struct.pack("<i", 1)]
            )
            yield service_pb2.ModelStreamInferResponse(infer_response=response)


@pytest.fixture
async def triton():
    fake = FakeTriton()
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield fake, TritonClient(f"127.0.0.1:{port}")
    await server.stop(None)


async def test_embeddings_go_in_batches_on_the_clients_stub(triton) -> None:
    fake, client = triton
    embedder = TritonEmbedder(client, "embedder", batch=2, dim=DIM)
    vectors = await embedder.embed(["a", "bb", "ccc", "é", "ee"], timeout_s=5)
    assert fake.batches == [2, 2, 1]
    assert vectors.shape == (5, DIM) and vectors.dtype == np.float32
    assert vectors[:, 0].tolist() == [1, 2, 3, 2, 2]  # "é" is two bytes
    assert (await embedder.embed([], timeout_s=5)).shape == (0, DIM)
    await embedder.close()


async def test_embedding_failures_are_the_gateways_errors(triton) -> None:
    fake, client = triton
    embedder = TritonEmbedder(client, "embedder", batch=2, dim=DIM)
    fake.failure = "slow"
    with pytest.raises(DeadlineExceeded, match=r"^embedding timed out$"):
        await embedder.embed(["a"], timeout_s=0.05)
    fake.failure = "dead"
    with pytest.raises(Unavailable, match=r"^embedder unavailable: INTERNAL$"):
        await embedder.embed(["a"], timeout_s=5)
    for _ in range(50):  # the model is reloaded in the background, on the same channel
        if fake.control == ["unload embedder", "load embedder"]:
            break
        await asyncio.sleep(0.02)
    assert fake.control == ["unload embedder", "load embedder"]
    assert await client.ready("embedder")
    await embedder.close()


async def test_generation_and_readiness_share_the_channel(triton) -> None:
    fake, client = triton
    llm = TritonLLM(client)
    assert llm.target == client.target and await llm.ready("llm")
    assert not await llm.ready("nope")
    deltas = [
        d
        async for d in llm.stream(
            "llm", "", "olleh", Sampling(4), stream=True, timeout_s=5, headers={}
        )
    ]
    assert deltas == [Delta("hello", 3, 1, "1")]
    fake.failure = "gone"  # a stream's error: a message, no status
    with pytest.raises(Unavailable, match=r"^llm unavailable: Request for unknown model"):
        async for _ in llm.stream(
            "llm", "", "x", Sampling(4), stream=True, timeout_s=5, headers={}
        ):
            pass
    await llm.close()
    nowhere = TritonClient("127.0.0.1:1")
    assert not await nowhere.ready("llm")  # nothing there: not ready
    await nowhere.close()

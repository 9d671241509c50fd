"""One Triton server over its gRPC API: one channel, the generated stub, model control.

Generation (llm.py) and embeddings (embedder.py) send raw `ModelInferRequest`s on the stub,
their tensors in Triton's raw little-endian encoding (`encode_bytes`, `decode_bytes` for
BYTES tensors); readiness, load and unload (recovery.py) go on the same channel.
tritonclient's own aio client is this stub with numpy and wrapper objects around each call:
only its generated protobuf modules are used here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common import serving


class TritonClient:
    """A channel to one Triton `target` and the stub on it; close it once, when done."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = serving.new_channel(target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def ready(self, model: str, version: str = "") -> bool:
        """Whether Triton serves `model` (at `version`, "" for its policy's); False when
        Triton cannot be asked."""
        request = service_pb2.ModelReadyRequest(name=model, version=version)
        try:
            return bool((await self.stub.ModelReady(request)).ready)
        except grpc.aio.AioRpcError:
            return False

    async def load(self, model: str) -> None:
        """Loads `model` from the repository (again); raises AioRpcError if Triton cannot."""
        await self.stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name=model)
        )

    async def unload(self, model: str) -> None:
        """Unloads `model` (not the models it depends on); returns before it is gone."""
        request = service_pb2.RepositoryModelUnloadRequest(model_name=model)
        await self.stub.RepositoryModelUnload(request)

    async def close(self) -> None:
        await self._channel.close()


def encode_bytes(items: Iterable[bytes]) -> bytes:
    """A BYTES tensor's raw contents: each element a little-endian uint32 length, then it."""
    return b"".join([struct.pack("<I", len(item)) + item for item in items])


def decode_bytes(raw: bytes) -> list[bytes]:
    """A BYTES tensor's elements, from its raw contents."""
    parts, at = [], 0
    while at + 4 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        parts.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return parts

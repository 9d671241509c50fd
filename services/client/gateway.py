"""A thin client of the public Gateway API, through Envoy by default."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf import empty_pb2
from ragmesh.v1 import admin_pb2, gateway_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb
from tqdm import tqdm

from services.common.serving import CHANNEL_OPTIONS

INGEST_BATCH = 8


class Client:
    def __init__(self, target: str, api_key: str, timeout_s: float = 60.0) -> None:
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("x-api-key", api_key),)
        self._timeout = timeout_s

    def ask(self, request: pb.GenerateRequest) -> pb.GenerateResponse:
        return self._stub.Generate(request, timeout=self._timeout, metadata=self._metadata)

    def ask_stream(self, request: pb.GenerateRequest) -> Iterator[pb.GenerateStreamResponse]:
        yield from self._stub.GenerateStream(
            request, timeout=self._timeout, metadata=self._metadata
        )

    def search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        return self._stub.Search(request, timeout=self._timeout, metadata=self._metadata)

    def status(self) -> pb.StatusResponse:
        return self._stub.GetStatus(
            empty_pb2.Empty(), timeout=self._timeout, metadata=self._metadata
        )

    def ingest(self, documents: list[pb.Document], progress: bool = True) -> tuple[int, int, str]:
        """Ingests in batches; returns (documents, chunks, corpus version)."""
        done = chunks = 0
        version = ""
        with tqdm(total=len(documents), unit="doc", disable=not progress) as bar:
            for start in range(0, len(documents), INGEST_BATCH):
                batch = documents[start : start + INGEST_BATCH]
                reply = self._stub.IngestDocuments(
                    pb.IngestDocumentsRequest(documents=batch),
                    timeout=max(self._timeout, 300.0),
                    metadata=self._metadata,
                )
                done, chunks = done + reply.documents, chunks + reply.chunks
                version = reply.corpus_version
                bar.update(len(batch))
        return done, chunks, version

    def usage(self, request: admin_pb2.GetUsageRequest) -> admin_pb2.UsageResponse:
        """The usage of the key's own tenant (`request.tenant` empty or its own)."""
        return self._stub.GetUsage(request, timeout=self._timeout, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

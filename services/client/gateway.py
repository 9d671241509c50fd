"""A thin client of the public Gateway API, through Envoy by default."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import grpc
from google.protobuf import empty_pb2
from ragmesh.v1 import admin_pb2, gateway_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb
from tqdm import tqdm

from services.common.errors import field_violations
from services.common.serving import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES

# Documents in one ingest request: at most INGEST_BATCH, and INGEST_BATCH_BYTES unless one
# alone is larger; one that cannot fit a gRPC message at all is not sent.
INGEST_BATCH = 8
INGEST_BATCH_BYTES = 16 * 1024 * 1024
_SENDABLE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
_DOCUMENT_FIELD = re.compile(r"^documents\[(\d+)\]")


class Ingested(NamedTuple):
    """What an ingest stored, and the documents it could not: (the document's position in
    the documents given, why)."""

    documents: int
    chunks: int
    corpus_version: str
    failed: list[tuple[int, str]]

    def complete(self) -> Ingested:
        """Itself where every document was stored; else RuntimeError saying which were not
        (for callers whose documents must all go in: a benchmark's corpus)."""
        if self.failed:
            raise RuntimeError(f"documents not ingested: {self.failed}")
        return self


def _batches(documents: Iterable[pb.Document]) -> Iterator[list[tuple[int, pb.Document]]]:
    """The documents, numbered from 0, in batches of INGEST_BATCH and INGEST_BATCH_BYTES."""
    batch: list[tuple[int, pb.Document]] = []
    size = 0
    for n, document in enumerate(documents):
        if batch and (
            len(batch) == INGEST_BATCH or size + document.ByteSize() > INGEST_BATCH_BYTES
        ):
            yield batch
            batch, size = [], 0
        batch.append((n, document))
        size += document.ByteSize()
    if batch:
        yield batch


def _refused(error: grpc.RpcError, size: int) -> dict[int, str]:
    """The documents (by their place in a request of `size`) an INVALID_ARGUMENT names, and
    why: each one's field violation; all of them, with the message, where none is named."""
    named: dict[int, str] = {}
    for field, why in field_violations(error.trailing_metadata()):
        match = _DOCUMENT_FIELD.match(field)
        if match and int(match.group(1)) < size:
            named.setdefault(int(match.group(1)), why)
    return named or dict.fromkeys(range(size), error.details() or "INVALID_ARGUMENT")


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

    def ingest(
        self, documents: Iterable[pb.Document], total: int | None = None, progress: bool = True
    ) -> Ingested:
        """Ingests the documents in batches, read from `documents` as they go (`total` of
        them, for the progress bar). A document a batch is refused for (INVALID_ARGUMENT:
        content that cannot be read, a bad id, ...) is left out, and the rest of its batch
        sent again; any other error raises grpc.RpcError."""
        stored = Ingested(0, 0, "", [])
        with tqdm(total=total, unit="doc", disable=not progress) as bar:
            for batch in _batches(documents):
                reply, left_out = self._ingest_batch(batch)
                stored = Ingested(
                    stored.documents + reply.documents,
                    stored.chunks + reply.chunks,
                    reply.corpus_version or stored.corpus_version,
                    stored.failed + left_out,
                )
                bar.update(len(batch))
        return stored

    def _ingest_batch(
        self, batch: list[tuple[int, pb.Document]]
    ) -> tuple[pb.IngestDocumentsResponse, list[tuple[int, str]]]:
        """Sends a batch until what is left of it is stored; the reply (empty where nothing
        was) and the documents left out, and why."""
        left_out = [
            (n, f"{d.ByteSize():,} bytes, over the {_SENDABLE_BYTES:,} a request can carry")
            for n, d in batch
            if d.ByteSize() > _SENDABLE_BYTES
        ]
        batch = [(n, d) for n, d in batch if d.ByteSize() <= _SENDABLE_BYTES]
        while batch:
            request = pb.IngestDocumentsRequest(documents=[d for _, d in batch])
            try:
                reply = self._stub.IngestDocuments(
                    request, timeout=max(self._timeout, 300.0), metadata=self._metadata
                )
                return reply, left_out
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                refused = _refused(exc, len(batch))
            left_out += [(batch[i][0], why) for i, why in sorted(refused.items())]
            batch = [entry for i, entry in enumerate(batch) if i not in refused]
        return pb.IngestDocumentsResponse(), left_out

    def usage(self, request: admin_pb2.GetUsageRequest) -> admin_pb2.UsageResponse:
        """The usage of the key's own tenant (`request.tenant` empty or its own)."""
        return self._stub.GetUsage(request, timeout=self._timeout, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

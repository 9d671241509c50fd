"""The sample corpus's documents, ingested through the edge for one key."""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

from ragmesh.v1 import gateway_pb2 as pb

from services.client.files import read_document
from services.client.gateway import Client
from services.client.sample_corpus import harvest


def sample_documents(folder: Path, only: Collection[str] = ()) -> list[pb.Document]:
    """The sample corpus harvested into `folder`: every document, or those of `only`'s ids."""
    documents = [read_document(path) for path in harvest(folder)]
    return [d for d in documents if not only or d.id in only]


def ingest(target: str, key: str, documents: list[pb.Document]) -> tuple[int, float]:
    """(chunks, seconds): one document a call, as the benchmarks do, so that no call
    outruns the gateway's budget while the CPU is busy."""
    started = time.perf_counter()
    client = Client(target, key)
    try:
        chunks = sum(
            client.ingest([document], progress=False).complete().chunks for document in documents
        )
    finally:
        client.close()
    return chunks, time.perf_counter() - started

"""Builds the retrieval gRPC server: the one composition root of this plane."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health
from ragmesh.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common import metrics, serving
from services.config.retrieval import RetrievalConfig
from services.config.telemetry import TelemetryConfig
from services.retrieval.core import RetrievalCore
from services.retrieval.corpus_log import CorpusLog
from services.retrieval.replication import Replicator
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import MilvusStore
from services.triton.client import TritonClient
from services.triton.embedder import TritonEmbedder

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name


@dataclass
class RetrievalServer:
    server: grpc.aio.Server
    port: int
    core: RetrievalCore
    health: health.aio.HealthServicer
    replicator: Replicator | None
    metrics_host: str
    metrics_port: int

    async def start(self) -> None:
        """Applies what the log holds beyond Milvus (after a crash) before serving."""
        metrics.serve(self.metrics_port, self.metrics_host)
        await self.core.recover()
        await self.server.start()
        if self.replicator is not None:
            self.replicator.start()
        await serving.set_serving(self.health, [SERVICE_NAME], up=True)

    async def _close(self) -> None:
        if self.replicator is not None:
            await self.replicator.stop()
        await self.core.close()

    async def stop(self, grace_s: float | None = None) -> None:
        await self.server.stop(grace_s)
        await self._close()

    async def serve(self) -> None:
        await self.start()
        await serving.run_until_signal(self.server, self.health, [SERVICE_NAME])
        await self._close()


def build_server(config: RetrievalConfig, tracing: TelemetryConfig) -> RetrievalServer:
    """With telemetry off (`tracing.enabled` false): no spans, per-call metrics or endpoint."""
    store = MilvusStore(
        config.milvus_uri, config.milvus_token, config.collection, config.embedding_dim
    )
    embedder = TritonEmbedder(
        TritonClient(config.triton_target),
        config.embedder_model,
        config.embed_batch,
        config.embedding_dim,
    )
    core = RetrievalCore(config, store, embedder, CorpusLog(config.corpus_log))
    replicator = None
    if config.primary_target:
        replicator = Replicator(core, config.primary_target, config.replication_interval_s)
    server = serving.new_server("retrieval", tracing)
    retrieval_pb2_grpc.add_RetrievalServicer_to_server(RetrievalServicer(core), server)
    health_servicer = serving.add_health_and_reflection(server, [SERVICE_NAME])
    port = serving.bind(server, config.host, config.port)
    return RetrievalServer(
        server=server,
        port=port,
        core=core,
        health=health_servicer,
        replicator=replicator,
        metrics_host=config.host,
        metrics_port=config.metrics_port if tracing.enabled else 0,
    )

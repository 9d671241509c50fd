"""One trace per request across Envoy, gateway, retrieval and Triton, received over OTLP."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from services.common.telemetry import digest
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.config.telemetry import TelemetryConfig
from services.supervisor.launcher import ROOT, Mesh, isolated

pytestmark = pytest.mark.integration


def _body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, sent with a length or chunked."""
    if handler.headers["content-length"] is not None:
        return handler.rfile.read(int(handler.headers["content-length"]))
    chunks = []
    while size := int(handler.rfile.readline().strip() or b"0", 16):
        chunks.append(handler.rfile.read(size))
        handler.rfile.readline()
    handler.rfile.readline()
    return b"".join(chunks)


def _hex_ids_to_base64(node: object) -> object:
    """OTLP/JSON writes trace and span ids in hex where protobuf's JSON expects base64."""
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
            else _hex_ids_to_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def _decode(headers, body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """OTLP/HTTP in any of its encodings: protobuf or JSON, gzip or not."""
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    request = trace_service_pb2.ExportTraceServiceRequest()
    if "json" in (headers.get("content-type") or ""):
        json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), request)
    else:
        request.ParseFromString(body)
    return request


class Receiver:
    """An OTLP/HTTP trace receiver: keeps every span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = _decode(self.headers, _body(self))
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        attrs = {
                            a.key: a.value.string_value for a in resource_spans.resource.attributes
                        }
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                receiver.spans.append((attrs.get("service.name", ""), span))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> list[tuple[str, object]]:
        with self.lock:
            return [(s, span) for s, span in self.spans if span.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory):
    receiver = Receiver()
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    config = isolated(base, tmp_path_factory.mktemp("traced"))
    every = TelemetryConfig(otlp_endpoint=receiver.url, sample_ratio=1.0)
    config = dataclasses.replace(config, telemetry=every)
    with Mesh(config) as mesh:
        yield mesh, receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _attributes(span) -> dict[str, object]:
    found: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        found[a.key] = getattr(a.value, kind) if kind else None
    return found


def test_one_generate_is_one_trace_across_every_layer(traced):
    mesh, receiver = traced
    key = mesh.config.mesh.demo_key
    with grpc.insecure_channel(mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        document = pb.Document(id="kiln", title="Kilns", text="A kiln fires clay at 1200 degrees.")
        stub.IngestDocuments(
            pb.IngestDocumentsRequest(documents=[document]),
            metadata=(("x-api-key", key),),
            timeout=60,
        )
        query = "How hot does a kiln fire clay?"
        reply = stub.Generate(
            pb.GenerateRequest(query=query, max_tokens=16),
            metadata=(("x-api-key", key),),
            timeout=120,
        )
    deadline = time.monotonic() + 20
    while True:  # until every service's spans are in, and every span's parent
        spans = receiver.trace(reply.trace_id)
        services = {service for service, _ in spans}
        ids = {span.span_id for _, span in spans}
        complete = all(span.parent_span_id in ids for _, span in spans if span.parent_span_id)
        if (
            complete
            and {"ragmesh-edge", "ragmesh-gateway", "ragmesh-retrieval"} <= services
            and any("triton" in s for s in services)
        ):
            break
        assert time.monotonic() < deadline, (services, complete, len(receiver.spans))
        time.sleep(0.5)
    # One tree: Envoy's span is the root, every other span's parent is in the trace.
    roots = [(service, span.name) for service, span in spans if not span.parent_span_id]
    assert [service for service, _ in roots] == ["ragmesh-edge"], roots
    by_name = defaultdict(list)
    for service, span in spans:
        by_name[(service, span.name)].append(_attributes(span))
    (chat,) = [a for (s, n), attrs in by_name.items() if n.startswith("chat ") for a in attrs]
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.request.model"] == "standard"
    assert chat["gen_ai.usage.input_tokens"] > 0 and 0 < chat["gen_ai.usage.output_tokens"] <= 16
    assert chat["gen_ai.response.finish_reasons"]
    (request,) = by_name[("ragmesh-gateway", "/ragmesh.v1.Gateway/Generate")]
    assert request["ragmesh.tenant"] == digest("demo")
    assert request["ragmesh.region"] == "local" and request["ragmesh.tier"] == "standard"
    assert request["ragmesh.cache_status"] == "miss" and request["ragmesh.degraded"] is False
    assert request["ragmesh.retrieval.k"] >= 1 and request["ragmesh.retrieval.top_score"] > 0
    assert request["ragmesh.corpus_version"] and request["ragmesh.prompt_hash"]
    (retrieve,) = by_name[("ragmesh-retrieval", "retrieve")]
    assert retrieve["openinference.span.kind"] == "RETRIEVER"
    assert retrieve["retrieval.documents.0.document.id"] == "kiln"
    # Logs are JSON lines naming the trace they were written in: the ingest's is exported.
    log = mesh.processes["retrieval-local"].log_path.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (upserted,) = [line for line in lines if line["message"].startswith("upserted 1 documents")]
    assert any(span.trace_id.hex() == upserted["trace_id"] for _, span in receiver.spans)
    assert "1200 degrees" not in log and key not in log
    # Envoy's health checks, every second, are no spans of ours.
    assert not [span.name for _, span in receiver.spans if "grpc.health" in span.name]
    # Nothing of the prompt, the documents or the key in clear.
    text = str([(s, _attributes(span)) for s, span in spans])
    for secret in (query, "1200 degrees", key, "demo'"):
        assert secret not in text


def test_unsampled_requests_export_nothing_yet_keep_their_trace_ids(tmp_path_factory):
    """At sample_ratio 0 no layer exports a span, yet every reply names its trace and the
    log lines carry it; a caller inside the mesh that sends a sampled traceparent straight
    to a gateway still gets its request traced, whole (and shows the receiver works)."""
    receiver = Receiver()
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    config = isolated(base, tmp_path_factory.mktemp("unsampled"))
    never = TelemetryConfig(otlp_endpoint=receiver.url, sample_ratio=0.0)
    with Mesh(dataclasses.replace(config, telemetry=never)) as mesh:
        key = (("x-api-key", mesh.config.mesh.demo_key),)
        gateway = f"127.0.0.1:{mesh.regions[0].config.gateway.port}"
        request = pb.GenerateRequest(query="How hot is a kiln?", tier="economy")
        with grpc.insecure_channel(mesh.edge_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            document = pb.Document(id="kiln", title="Kilns", text="A kiln fires clay hot.")
            stub.IngestDocuments(
                pb.IngestDocumentsRequest(documents=[document]), metadata=key, timeout=60
            )
            unsampled = stub.Generate(request, metadata=key, timeout=60)
        asked = "4bf92f3577b34da6a3ce929d0e0e4736"
        with grpc.insecure_channel(gateway) as channel:
            traced = gateway_pb2_grpc.GatewayStub(channel).Generate(
                pb.GenerateRequest(query="What does a kiln fire?", tier="economy"),
                metadata=(*key, ("traceparent", f"00-{asked}-00f067aa0ba902b7-01")),
                timeout=60,
            )
        assert len(unsampled.trace_id) == 32 and traced.trace_id == asked
        # Whole: Envoy's internal listener (the gateway's call to retrieval) follows too.
        wanted = {"ragmesh-edge", "ragmesh-gateway", "ragmesh-retrieval"}
        deadline = time.monotonic() + 20
        while not wanted <= {s for s, _ in receiver.trace(asked)}:
            assert time.monotonic() < deadline, receiver.spans
            time.sleep(0.5)
        time.sleep(6)  # past every exporter's batch delay (Triton's and Envoy's are 5 s)
        with receiver.lock:
            other = {span.trace_id.hex() for _, span in receiver.spans} - {asked}
        assert not other, f"spans of unsampled traces were exported: {other}"
        log = mesh.processes["retrieval-local"].log_path.read_text()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        (upserted,) = [line for line in lines if line["message"].startswith("upserted 1 documents")]
        assert len(upserted["trace_id"]) == 32
    receiver.server.shutdown()
    receiver.server.server_close()

"""Secrets in requests stay out of every log line and every exported span of the mesh.

A fake provider key, an email, a phone and a card number travel in a question, in an
ingested document, in refused field values (a priority, a model) and in credential headers
(x-api-key, authorization), over gRPC and the OpenAI API, on a mesh that exports every
span to an OTLP receiver (test_traces.py's). Then no log file of any process (gateway,
retrieval, Triton, Envoy, the store) and no span of the Python services holds any of them;
nor does Envoy's (it records a refused call's grpc-message, which the gateway's errors
redact when they are made: services/common/errors.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import pytest
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from tests.integration.test_traces import traced  # noqa: F401  (the traced mesh)

pytestmark = pytest.mark.integration

KEY = "sk-proj-" + "Qw7" * 9 + "T3BlbkFJ" + "zX4" * 7  # built from parts: no scanner's leak
EMAIL = "alice.boundary@example.com"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
SECRETS = (KEY, KEY[:24], EMAIL, PHONE, CARD, CARD.replace(" ", ""))
LAYERS = {"ragmesh-edge", "ragmesh-gateway", "ragmesh-retrieval"}


def _post(mesh, path: str, body: dict | None, headers: dict[str, str], method="POST") -> int:
    request = urllib.request.Request(
        mesh.http_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def _refused(call, request, metadata) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        call(request, metadata=metadata, timeout=60)
    return refused.value.code()


@pytest.fixture(scope="module")
def exported(traced):  # noqa: F811
    """Requests that carry the secrets, answered or refused; then (each exported span as
    text with its service's name, each process's log)."""
    mesh, receiver = traced
    demo = (("x-api-key", mesh.config.mesh.demo_key),)
    question = f"My card {CARD}, phone {PHONE}, mail {EMAIL}, key {KEY}: how hot is a kiln?"
    with grpc.insecure_channel(mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        document = pb.Document(
            id="kiln-contact",
            title=f"Kiln contact {EMAIL}",
            text=f"A kiln fires clay at 1200 degrees. Call {PHONE}, pay with {CARD}, key {KEY}.",
            metadata={"owner": EMAIL},
        )
        stub.IngestDocuments(
            pb.IngestDocumentsRequest(documents=[document]), metadata=demo, timeout=60
        )
        reply = stub.Generate(
            pb.GenerateRequest(query=question, tier="economy", max_tokens=8, bypass_cache=True),
            metadata=demo,
            timeout=120,
        )
        bad_priority = pb.GenerateRequest(query=question, priority=KEY, max_tokens=8)
        assert _refused(stub.Generate, bad_priority, demo) == grpc.StatusCode.INVALID_ARGUMENT
        search = pb.SearchRequest(query=question)
        assert _refused(stub.Search, search, (("x-api-key", KEY),)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        bearer = (("authorization", f"Bearer {KEY}"),)
        assert _refused(stub.Search, search, bearer) == grpc.StatusCode.UNAUTHENTICATED
    chat = {"model": "economy", "messages": [{"role": "user", "content": question}]}
    key = mesh.config.mesh.demo_key
    assert _post(mesh, "/v1/chat/completions", {**chat, "max_tokens": 8}, {"x-api-key": key}) == 200
    assert _post(mesh, "/v1/chat/completions", {**chat, "model": KEY}, {"x-api-key": key}) == 404
    assert _post(mesh, "/v1/chat/completions", chat, {"authorization": f"Bearer {KEY}"}) == 401
    # In what Envoy could log of a request line: a user agent, a query string, a path.
    agent = {"x-api-key": key, "user-agent": f"probe/1.0 ({EMAIL}; {KEY})"}
    assert _post(mesh, "/v1/search", {"query": "kiln"}, agent) == 200
    assert _post(mesh, f"/v1/search?api_key={KEY}", {"query": "kiln"}, {"x-api-key": key}) == 400
    gone = _post(mesh, f"/v1/documents/{CARD.replace(' ', '')}", None, {"x-api-key": key}, "DELETE")
    assert gone == 404
    # Every layer's spans of the answered question are in, then past every batch delay.
    deadline = time.monotonic() + 20
    while not LAYERS.issubset(service for service, _ in receiver.trace(reply.trace_id)):
        assert time.monotonic() < deadline, {s for s, _ in receiver.spans}
        time.sleep(0.5)
    time.sleep(6)  # Triton's and Envoy's exporters send every 5 s
    with receiver.lock:
        spans = [(service, str(span)) for service, span in receiver.spans]
    logs = {name: p.log_path.read_text(errors="replace") for name, p in mesh.processes.items()}
    return spans, logs


def _holding(texts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(secret, where) for each secret found in a text."""
    return [(secret, where) for secret in SECRETS for where, text in texts if secret in text]


def test_no_log_line_of_any_process_holds_a_secret(exported):
    _, logs = exported
    assert {"gateway-local", "retrieval-local", "triton-local", "envoy"} <= set(logs)
    assert not _holding(list(logs.items()))


def test_no_span_of_the_python_services_holds_a_secret(exported):
    spans, _ = exported
    ours = [(service, span) for service, span in spans if service.startswith("ragmesh-")]
    ours = [(service, span) for service, span in ours if service != "ragmesh-edge"]
    assert {service for service, _ in ours} >= {"ragmesh-gateway", "ragmesh-retrieval"}
    assert not _holding(ours)
    # Not by luck: the refused priority's value was in the gateway span's exception event
    # (message and stack trace), and left it redacted.
    assert any("[REDACTED:api_key]" in span for _, span in ours)


def test_no_span_of_envoy_or_triton_holds_a_secret(exported):
    spans, _ = exported
    theirs = [(s, span) for s, span in spans if s == "ragmesh-edge" or s.startswith("triton")]
    assert {service for service, _ in theirs} >= {"ragmesh-edge"}
    assert not _holding(theirs)

"""Files through the real mesh (issue 18, item 5). On the real Milvus Lite with a stand-in
embedder (tests/integration/store_cores.py): each chunk's page and heading path are stored
with it, survive a restart and reach replicas through the corpus log. Then a PDF and a
DOCX that LibreOffice wrote (tests/conftest.py's office_files), ingested as bytes over gRPC
and as base64 over JSON through Envoy: a search hit and an answer's citations say the page
or the heading path. Files that cannot be read are refused one violation each, and nothing
of their request is stored; content up to the size limit passes every hop; `ragmesh
ingest` of a folder with a corrupt file ingests the others. The parser's own cases are
tests/unit/test_parsing.py's."""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
import zipfile
from pathlib import Path

import grpc
import pypdf
import pytest
from google.rpc import error_details_pb2, status_pb2
from ragmesh.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb
from store_cores import core

from services.cli.__main__ import main
from services.client.files import read_document
from services.contract.documents import Document
from services.supervisor.launcher import ROOT, Mesh

pytestmark = pytest.mark.integration

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
FRESNEL = "Who invented the Fresnel lens?"
STARTER = "How often should I feed the sourdough starter?"


def _tenant_key(mesh: Mesh) -> str:
    """A new tenant's key, once the gateway knows it: the tenant's corpus is empty."""
    metadata = (("x-admin-key", mesh.config.mesh.demo_admin_key),)
    name = f"docs-{secrets.token_hex(4)}"
    with grpc.insecure_channel(mesh.edge_target) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        admin.CreateTenant(admin_pb2.Tenant(name=name), metadata=metadata, timeout=10)
        request = admin_pb2.CreateKeyRequest(tenant=name)
        key = admin.CreateKey(request, metadata=metadata, timeout=10)
    deadline = time.monotonic() + 10
    while True:  # each gateway reloads the registry within registry_refresh_s
        try:
            _search(mesh, key.key, "ready?")
            return str(key.key)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _search(mesh: Mesh, key: str, query: str) -> pb.SearchResponse:
    with grpc.insecure_channel(mesh.edge_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        return stub.Search(
            pb.SearchRequest(query=query, top_k=3), metadata=(("x-api-key", key),), timeout=30
        )


def _files(office_files: Path) -> list[pb.Document]:
    return [
        pb.Document(
            id="lighthouses",
            content=(office_files / "lighthouses.pdf").read_bytes(),
            media_type=PDF,
            metadata={"kind": "history"},
        ),
        pb.Document(
            id="baking", content=(office_files / "baking.docx").read_bytes(), media_type=DOCX
        ),
    ]


def _as_json(document: pb.Document) -> dict[str, object]:
    return {
        "id": document.id,
        "content": base64.b64encode(document.content).decode(),
        "media_type": document.media_type,
        "metadata": dict(document.metadata),
    }


async def _places(c) -> set[tuple[str, int, str]]:
    chunks, _, _ = await c.search("acme", "q", 50, {}, 5.0)
    return {(chunk.document_id, chunk.page, chunk.heading) for chunk in chunks}


@pytest.mark.parametrize("hot", [True, False], ids=["hot-index", "milvus-only"])
async def test_pages_and_headings_are_stored_and_replicated(tmp_path, office_files, hot):
    documents = [
        Document(
            "guide", "", "", content=(office_files / "lighthouses.pdf").read_bytes(), media_type=PDF
        ),
        Document(
            "notes",
            "",
            "",
            content=b"# Notes\n\n## Kettles\n\nDescale.",
            media_type="text/markdown",
        ),
        Document("plain", "Plain", "No page, no heading."),
    ]
    places = {
        ("guide", 1, ""),
        ("guide", 2, ""),
        ("guide", 3, ""),
        ("notes", 0, "Notes"),
        ("notes", 0, "Notes > Kettles"),
        ("plain", 0, ""),
    }
    primary = core(tmp_path, "primary", hot)
    replica = core(tmp_path, "replica", hot, "primary:1")
    try:
        for c in (primary, replica):
            await c.recover()
        await primary.upsert("acme", documents, 5.0)
        assert await _places(primary) == places
        entries, head = await primary.log_after(0, 10)
        assert list(entries[0].upsert.pages) == [1, 2, 3] and not entries[2].upsert.headings
        await replica.replicate(entries, head)
        assert await _places(replica) == places
        await primary.close()
        primary = core(tmp_path, "primary", hot)  # restarted: read back from Milvus
        await primary.recover()
        assert await _places(primary) == places
    finally:
        for c in (primary, replica):
            await c.close()


@pytest.fixture(scope="module", params=["grpc", "json"])
def ingested(request, mesh: Mesh, stub, http, office_files: Path) -> tuple[str, str]:
    """A new tenant holding the two files, ingested over `request.param`: (key, protocol)."""
    key = _tenant_key(mesh)
    documents = _files(office_files)
    if request.param == "grpc":
        reply = stub.IngestDocuments(
            pb.IngestDocumentsRequest(documents=documents),
            metadata=(("x-api-key", key),),
            timeout=120,
        )
        assert (reply.documents, reply.chunks > 2) == (2, True)
    else:
        body = json.dumps({"documents": [_as_json(d) for d in documents]}).encode()
        status, reply = http("POST", "/v1/documents", key, body)
        assert (status, reply["documents"]) == (200, 2), reply
    return key, request.param


def test_a_hit_says_the_page_of_a_pdf_and_the_heading_of_a_docx(mesh, http, ingested):
    key, protocol = ingested
    if protocol == "grpc":
        fresnel = _search(mesh, key, FRESNEL).hits[0]
        starter = _search(mesh, key, STARTER).hits[0]
        found = [(h.document_id, h.title, h.page, h.heading) for h in (fresnel, starter)]
        assert "Augustin-Jean Fresnel" in fresnel.text
        assert dict(fresnel.metadata) == {"kind": "history"}  # the reserved keys stay inside
    else:
        hits = [
            http("POST", "/v1/search", key, json.dumps({"query": q}).encode())[1]["hits"][0]
            for q in (FRESNEL, STARTER)
        ]
        found = [(h["document_id"], h["title"], h["page"], h["heading"]) for h in hits]
    assert found == [
        ("lighthouses", "A short history of lighthouses", 2, ""),
        ("baking", "Bread baking handbook", 0, "Sourdough > Feeding the starter"),
    ]


def test_an_answer_cites_the_page_and_the_heading(stub, http, ingested):
    key, protocol = ingested
    for query, cited in (
        (FRESNEL, ("lighthouses", 2, "")),
        (STARTER, ("baking", 0, "Sourdough > Feeding the starter")),
    ):
        if protocol == "grpc":
            reply = stub.Generate(
                pb.GenerateRequest(query=query, tier="economy", top_k=2),
                metadata=(("x-api-key", key),),
                timeout=60,
            )
            citations = [(c.document_id, c.page, c.heading) for c in reply.citations]
        else:
            body = json.dumps({"query": query, "tier": "economy", "top_k": 2}).encode()
            status, reply = http("POST", "/v1/generate", key, body)
            assert status == 200, reply
            citations = [(c["document_id"], c["page"], c["heading"]) for c in reply["citations"]]
        assert citations and citations[0] == cited, reply


def _encrypted(pdf: bytes) -> bytes:
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf))
    writer.encrypt(user_password="secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _violations(details: bytes) -> list[tuple[str, str]]:
    bad = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(details).details[0].Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]


def test_files_that_cannot_be_read_are_each_named_and_nothing_is_stored(
    mesh, stub, http, office_files
):
    key = _tenant_key(mesh)
    good, docx = _files(office_files)
    documents = [
        good,
        pb.Document(id="locked", content=_encrypted(good.content), media_type=PDF),
        pb.Document(id="torn", content=docx.content[:2000], media_type=DOCX),
        pb.Document(id="picture", content=b"GIF89a", media_type="image/gif"),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestDocuments(
            pb.IngestDocumentsRequest(documents=documents),
            metadata=(("x-api-key", key),),
            timeout=120,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(dict(err.value.trailing_metadata())["grpc-status-details-bin"])
    assert [field for field, _ in violations] == [
        "documents[1].content",
        "documents[2].content",
        "documents[3].media_type",
    ]
    assert "document 'locked': is an encrypted PDF that needs a password" in violations[0][1]
    assert "document 'torn': cannot be read as " + DOCX in violations[1][1]
    assert "document 'picture': 'image/gif' is not one of" in violations[2][1]
    assert "documents[1].content: document 'locked'" in err.value.details()
    # Over JSON: 400, the same violations in the body's google.rpc.BadRequest.
    body = json.dumps({"documents": [_as_json(d) for d in documents]}).encode()
    status, reply = http("POST", "/v1/documents", key, body)
    assert status == 400, reply
    (detail,) = reply["details"]
    assert [v["field"] for v in detail["field_violations"]] == [f for f, _ in violations]
    # Atomic: the good document went in with neither.
    assert not _search(mesh, key, FRESNEL).hits
    assert http("GET", "/v1/status", key)[1]["corpus_version"] in ("", "0")


def test_content_up_to_the_limit_goes_through_every_hop_and_over_it_is_named(
    mesh, http, office_files
):
    """A DOCX of almost 20 MiB (a picture's worth of noise beside its text) as base64 in
    JSON: through Envoy's body limit, the gateway and the internal hop to retrieval. One
    byte over the limit is refused by the gateway, naming the field (not a 413)."""
    key = _tenant_key(mesh)
    limit = mesh.config.gateway.max_content_bytes
    docx = io.BytesIO((office_files / "baking.docx").read_bytes())
    with zipfile.ZipFile(docx, "a") as archive:
        archive.writestr("word/media/noise.bin", secrets.token_bytes(limit - 64 * 1024))
    big = pb.Document(id="big", content=docx.getvalue(), media_type=DOCX)
    assert limit - 64 * 1024 < len(big.content) <= limit
    body = json.dumps({"documents": [_as_json(big)]}).encode()
    status, reply = http("POST", "/v1/documents", key, body)
    assert (status, reply["documents"]) == (200, 1), reply
    over = pb.Document(id="over", content=b"x" * (limit + 1), media_type="text/plain")
    body = json.dumps({"documents": [_as_json(over)]}).encode()
    status, reply = http("POST", "/v1/documents", key, body)
    assert status == 400, reply
    assert reply["message"] == (
        f"documents[0].content: document 'over': {limit + 1:,} bytes, over the limit of {limit:,}"
    )


def test_cli_ingests_a_folder_around_a_corrupt_file(mesh, office_files, tmp_path, capsys):
    key = _tenant_key(mesh)
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("lighthouses.pdf", "baking.docx"):
        (folder / name).write_bytes((office_files / name).read_bytes())
    (folder / "notes.md").write_text("# Notes\n\n## Kettles\n\nDescale the kettle monthly.\n")
    (folder / "broken.pdf").write_bytes((office_files / "lighthouses.pdf").read_bytes()[:5000])
    argv = ["--config", str(ROOT / "config" / "mesh.yaml"), "--target", mesh.edge_target]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--api-key", key, "ingest", str(folder)])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert (
        f"not ingested: {folder / 'broken.pdf'}: document 'broken': cannot be read as {PDF}" in out
    )
    assert "ingested 3 documents as" in out and "1 of 4 files failed" in out
    assert "4/4" in err  # the progress bar counted every file
    assert read_document(folder / "notes.md").media_type == "text/markdown"
    hit = _search(mesh, key, "How often should a kettle be descaled?").hits[0]
    assert (hit.document_id, hit.title, hit.heading) == ("notes", "Notes", "Notes > Kettles")
    assert _search(mesh, key, FRESNEL).hits[0].page == 2

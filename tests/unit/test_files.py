from pathlib import Path

import grpc
from ragmesh.v1 import gateway_pb2 as pb

from services.client import gateway
from services.client.files import MEDIA_TYPES, document_id, find_files, read_document
from services.common.errors import InvalidArgument, status_details
from services.retrieval.parsing import SUPPORTED


def test_a_file_is_sent_as_its_bytes_and_media_type(tmp_path):
    page = tmp_path / "My Page.html"
    page.write_bytes(b"<title>Hello</title><p>First para.</p>")
    document = read_document(page)
    assert (document.id, document.title, document.text) == ("My-Page", "", "")
    assert (document.content, document.media_type) == (page.read_bytes(), "text/html")
    assert dict(document.metadata) == {"source": "My Page.html"}
    notes = tmp_path / "notes.rst"  # no type of its own: plain text, titled by its name
    notes.write_text("plain")
    assert (read_document(notes).media_type, read_document(notes).title) == ("text/plain", "notes")


def test_a_folder_walk_finds_the_types_the_server_parses(tmp_path):
    for name in ("a.md", "sub/b.txt", "sub/c.PDF", "d.docx", "e.htm", "f.bin", "g.doc"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = list(find_files([tmp_path, tmp_path / "sub" / "b.txt"]))
    names = ["a.md", "d.docx", "e.htm", "sub/b.txt", "sub/c.PDF", "b.txt"]
    assert [str(name) for _, name in found] == names
    assert [path for path, _ in found][-1] == tmp_path / "sub" / "b.txt"
    assert set(MEDIA_TYPES.values()) == set(SUPPORTED)
    assert document_id(Path("weird name (1).txt")) == "weird-name-1"


def test_files_of_one_name_in_two_folders_get_two_ids(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.md").write_text("# Notes")
    ids = [read_document(path, name).id for path, name in find_files([tmp_path])]
    assert ids == ["x.notes", "y.notes"]


class _Refusal(grpc.RpcError):
    def __init__(self, violations):
        self._error = InvalidArgument.of(violations)

    def code(self):
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self):
        return self._error.message

    def trailing_metadata(self):
        return (("grpc-status-details-bin", status_details(self._error)),)


class _Gateway:
    """Refuses any request holding a document whose text is "bad", naming each one."""

    def __init__(self):
        self.sent: list[list[str]] = []

    def IngestDocuments(self, request, timeout, metadata):
        ids = [d.id for d in request.documents]
        self.sent.append(ids)
        bad = [i for i, d in enumerate(request.documents) if d.text == "bad"]
        if bad:
            raise _Refusal([(f"documents[{i}].text", f"document {ids[i]!r}: bad") for i in bad])
        return pb.IngestDocumentsResponse(
            documents=len(ids), chunks=2 * len(ids), corpus_version="7"
        )


def test_ingest_leaves_out_the_documents_refused_and_sends_the_rest_again(monkeypatch):
    monkeypatch.setattr(gateway, "INGEST_BATCH", 3)
    client = gateway.Client("127.0.0.1:1", "key")
    client._stub = _Gateway()
    texts = ["ok", "bad", "ok", "ok", "bad", "bad", "ok"]
    documents = (pb.Document(id=f"d{n}", text=text) for n, text in enumerate(texts))
    stored = client.ingest(documents, total=len(texts), progress=False)
    assert client._stub.sent == [
        ["d0", "d1", "d2"],
        ["d0", "d2"],
        ["d3", "d4", "d5"],
        ["d3"],
        ["d6"],
    ]
    assert stored == (
        4,
        8,
        "7",
        [(1, "document 'd1': bad"), (4, "document 'd4': bad"), (5, "document 'd5': bad")],
    )
    client.close()


def test_a_batch_holds_at_most_its_bytes_unless_one_document_is_larger(monkeypatch):
    monkeypatch.setattr(gateway, "INGEST_BATCH_BYTES", 1000)
    sizes = [400, 400, 400, 1500, 10]
    documents = [pb.Document(id=str(n), content=bytes(size)) for n, size in enumerate(sizes)]
    batches = [[n for n, _ in batch] for batch in gateway._batches(documents)]
    assert batches == [[0, 1], [2], [3], [4]]

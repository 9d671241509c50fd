"""Files as documents for ingestion: their bytes and media type, parsed by retrieval."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ragmesh.v1 import gateway_pb2 as pb

# File suffixes and the IANA media types the server parses (services/retrieval/parsing.py).
MEDIA_TYPES = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".html": "text/html",
    ".htm": "text/html",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


def document_id(path: Path) -> str:
    return _ID_UNSAFE.sub("-", path.stem).strip("-")[:128] or "document"


def read_document(path: Path) -> pb.Document:
    """The file's bytes as `content`, its media type by suffix (text/plain for another).
    A plain text file's title is its name; the other formats name their own, or get their
    id, the name, where they do not (OSError where the file cannot be read)."""
    media_type = MEDIA_TYPES.get(path.suffix.lower(), "text/plain")
    return pb.Document(
        id=document_id(path),
        title=path.stem if media_type == "text/plain" else "",
        content=path.read_bytes(),
        media_type=media_type,
        metadata={"source": path.name},
    )


def find_files(paths: list[Path]) -> Iterator[Path]:
    """The given files, and the files of MEDIA_TYPES' suffixes under the given folders,
    sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in MEDIA_TYPES)
        else:
            yield path

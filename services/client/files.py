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


def document_id(name: Path) -> str:
    """The id of a file found as `name` (relative to the folder it was found in): its
    folders and stem joined by ".", so that sub/notes.md and other/notes.md differ."""
    joined = ".".join((*name.parent.parts, name.stem))
    return _ID_UNSAFE.sub("-", joined).strip("-")[:128] or "document"


def read_document(path: Path, name: Path | None = None) -> pb.Document:
    """The file's bytes as `content`, its media type by suffix (text/plain for another),
    its id from `name` (its path in the folder it was found in; its file name by default).
    A plain text file's title is its name; the other formats name their own, or get their
    id where they do not (OSError where the file cannot be read)."""
    media_type = MEDIA_TYPES.get(path.suffix.lower(), "text/plain")
    return pb.Document(
        id=document_id(name or Path(path.name)),
        title=path.stem if media_type == "text/plain" else "",
        content=path.read_bytes(),
        media_type=media_type,
        metadata={"source": path.name},
    )


def find_files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """(path, name) of the given files (name: the file's name), and of the files of
    MEDIA_TYPES' suffixes under the given folders (name: the path under the folder),
    sorted."""
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in MEDIA_TYPES)
            yield from ((p, p.relative_to(path)) for p in found)
        else:
            yield path, Path(path.name)

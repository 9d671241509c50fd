"""Reads txt, md and html files into documents for ingestion."""

from __future__ import annotations

import html.parser
import re
from collections.abc import Iterator
from pathlib import Path

from ragmesh.v1 import gateway_pb2 as pb

SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


class _TextExtractor(html.parser.HTMLParser):
    """Visible text and <title> of an HTML page; scripts and styles are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        self._in_title = tag == "title"
        if tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "tr", "section"):
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()
        elif not self._skip:
            self.parts.append(data)


def document_id(path: Path) -> str:
    return _ID_UNSAFE.sub("-", path.stem).strip("-")[:128] or "document"


def read_document(path: Path) -> pb.Document:
    raw = path.read_text(encoding="utf-8", errors="replace")
    title = path.stem
    text = raw
    if path.suffix.lower() in (".html", ".htm"):
        parser = _TextExtractor()
        parser.feed(raw)
        text, title = "".join(parser.parts), parser.title or title
    else:
        heading = next((line for line in raw.splitlines() if line.startswith("# ")), "")
        title = heading[2:].strip() or title
    return pb.Document(id=document_id(path), title=title, text=text, metadata={"source": path.name})


def find_files(paths: list[Path]) -> Iterator[Path]:
    """The given files, and the txt/md/html files under the given folders, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        else:
            yield path

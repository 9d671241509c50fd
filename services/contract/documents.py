"""A document as the gateway sends it to retrieval and retrieval stores it: the internal
retrieval API's `Document` in plain Python, so that neither plane passes protobufs around."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

# Texts of one embedding request at most, checked by the gateway (before any charge) and by
# retrieval. OpenAI's endpoint takes 2,048; this CPU embedder reads about 100 a second.
MAX_EMBED_INPUTS = 256


@dataclass(frozen=True)
class Document:
    """`text` is chunked and embedded by retrieval; `title` is stored whole and embedded with
    each chunk; `metadata` holds identifier keys and short printable values (filters).
    Instead of `text`: `content`, a file's bytes of the IANA `media_type` (application/pdf,
    text/html, ...), which retrieval parses (services/retrieval/parsing.py)."""

    id: str
    title: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    media_type: str = ""


class DocumentMessage(Protocol):
    """The public API's and the retrieval API's Document message: the same fields."""

    id: str
    title: str
    text: str
    metadata: Mapping[str, str]
    content: bytes
    media_type: str


def from_message(message: DocumentMessage) -> Document:
    return Document(
        id=message.id,
        title=message.title,
        text=message.text,
        metadata=dict(message.metadata),
        content=message.content,
        media_type=message.media_type,
    )

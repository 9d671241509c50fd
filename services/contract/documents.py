"""A document as the gateway sends it to retrieval and retrieval stores it: the internal
retrieval API's `Document` in plain Python, so that neither plane passes protobufs around."""

from __future__ import annotations

from dataclasses import dataclass, field

# Texts of one embedding request at most, checked by the gateway (before any charge) and by
# retrieval. OpenAI's endpoint takes 2,048; this CPU embedder reads about 100 a second.
MAX_EMBED_INPUTS = 256


@dataclass(frozen=True)
class Document:
    """`text` is chunked and embedded by retrieval; `title` is stored whole and embedded with
    each chunk; `metadata` holds identifier keys and short printable values (filters)."""

    id: str
    title: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)

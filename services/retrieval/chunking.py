"""Splits documents into overlapping chunks on sentence boundaries."""

from __future__ import annotations

import re

# Sentence ends, blank lines, and line breaks before a heading, list item or code prompt.
_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n+|\n(?=\s*(?:#|>>>|[-*]\s|\d+[.)]\s))")
# A heading is a piece of its own, also when its line runs on into a paragraph.
_HEADING = re.compile(r"^(\s*#+ [^\n]*)\n", re.MULTILINE)


def sentences(text: str) -> list[str]:
    """Sentences, headings, list items and code lines, whitespace collapsed, empties dropped."""
    parts = (" ".join(p.split()) for p in _BREAK.split(_HEADING.sub(r"\1\n\n", text)))
    return [p for p in parts if p]


def _split_long(sentence: str, limit: int) -> list[str]:
    words = sentence.split()
    return [" ".join(words[i : i + limit]) for i in range(0, len(words), limit)]


def _overlap(previous: list[str], overlap_words: int) -> list[str]:
    """The trailing sentences of `previous` holding at least `overlap_words` words,
    never all of them (a chunk must not repeat its predecessor whole)."""
    kept: list[str] = []
    size = 0
    for piece in reversed(previous[1:]):
        if size >= overlap_words:
            break
        kept.insert(0, piece)
        size += len(piece.split())
    return kept


def chunk_text(text: str, chunk_words: int, overlap_words: int) -> list[str]:
    """Chunks of at most about `chunk_words` words; each starts with the previous chunk's
    last sentences (`overlap_words` words or more), so no fact is cut at a border.
    Sentences go one to a line, so headings and code stay told apart from prose.
    """
    pieces = [p for s in sentences(text) for p in _split_long(s, chunk_words)]
    chunks: list[str] = []
    current: list[str] = []
    fresh = False  # current holds a piece that no earlier chunk has
    for piece in pieces:
        size = sum(len(p.split()) for p in current)
        if fresh and size + len(piece.split()) > chunk_words:
            chunks.append("\n".join(current))
            current, fresh = _overlap(current, overlap_words), False
        current.append(piece)
        fresh = True
    if fresh:
        chunks.append("\n".join(current))
    return chunks

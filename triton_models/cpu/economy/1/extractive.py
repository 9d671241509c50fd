"""Grounded extractive answering: read the gateway's RAG prompt, answer with cited sentences.

Standard library only, apart from the prompt's format (services.contract.prompt, standard
library only too): unit tests import it without Triton or a tokenizer, and it reads prompts
with the parser that sits beside the gateway's own builder. Deterministic: the same prompt
always gives the same answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from services.contract import prompt as prompt_format
from services.contract.text import content_terms, split_sentences

REFUSAL = "The sources do not contain an answer to this question."
MAX_SENTENCES = 3
# A sentence after the best one is only added if it scores at least this fraction of the best.
RELATIVE_CUTOFF = 0.5
# Small additive prior for higher-ranked sources (lower id); below any single term's IDF (>= ln 2).
SOURCE_PRIOR = 0.05

TokenCounter = Callable[[str], int]

_SIMPLE_TOKEN_RE = re.compile(r"[^\W_]+|[^\w\s]")
_SEGMENT_RE = re.compile(r"\S+\s*")
_CODE_RE = re.compile(r"^\s*(?:>>>|\.\.\.\s|\$ )")
MAX_SENTENCE_WORDS = 60


@dataclass(frozen=True)
class Source:
    """One numbered source from the prompt."""

    id: int
    text: str
    document: str = ""
    chunk: str = ""


@dataclass(frozen=True)
class _Sentence:
    source_id: int
    rank: int
    order: int
    text: str
    terms: frozenset[str]


def simple_token_count(text: str) -> int:
    """Approximate token count (words and punctuation marks); the model injects WordPiece."""
    return len(_SIMPLE_TOKEN_RE.findall(text))


def parse_prompt(prompt: str) -> tuple[str, list[Source]]:
    """Return (question, sources) from the gateway's prompt, in the contract's format.

    A prompt not in that format is answered as a bare question with no sources.
    """
    question, numbered = prompt_format.parse_prompt(prompt)
    sources = [Source(n, s.text, s.document_id, s.chunk_id) for n, s in numbered.items()]
    return question, sources


def _candidates(text: str) -> list[tuple[str, str]]:
    """(sentence, heading above it) for the prose of a chunk; headings and code are context,
    not answers, and long run-on lines are cut into pieces of MAX_SENTENCE_WORDS words."""
    found: list[tuple[str, str]] = []
    heading = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            heading = line.strip().lstrip("#").strip()
            continue
        if _CODE_RE.match(line):
            continue
        for sentence in split_sentences(line):
            words = sentence.split()
            for i in range(0, len(words), MAX_SENTENCE_WORDS):
                found.append((" ".join(words[i : i + MAX_SENTENCE_WORDS]), heading))
    return found


def _rank_sentences(question: str, sources: Sequence[Source]) -> list[tuple[float, _Sentence]]:
    q_terms = set(content_terms(question))
    if not q_terms or not sources:
        return []
    ordered = sorted(sources, key=lambda s: s.id)
    sentences: list[_Sentence] = []
    seen_text: set[str] = set()
    for rank, source in enumerate(ordered):
        for order, (sentence, heading) in enumerate(_candidates(source.text)):
            key = sentence.lower()
            if key in seen_text:
                continue
            seen_text.add(key)
            # The heading's terms count too: "## json.loads" says what its sentences are about.
            terms = frozenset(content_terms(f"{heading} {sentence}"))
            sentences.append(_Sentence(source.id, rank, order, sentence, terms))
    n = len(sentences)
    df: dict[str, int] = {}
    for s in sentences:
        for term in s.terms & q_terms:
            df[term] = df.get(term, 0) + 1
    scored: list[tuple[float, _Sentence]] = []
    for s in sentences:
        overlap = sum(math.log(1.0 + n / df[t]) for t in s.terms & q_terms)
        if overlap > 0:
            scored.append((overlap + SOURCE_PRIOR / (s.rank + 1), s))
    scored.sort(key=lambda item: (-item[0], item[1].rank, item[1].order))
    return scored


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


def _shortened(sentence: _Sentence, max_tokens: int, count_tokens: TokenCounter) -> str:
    """The sentence's leading words and its citation, within max_tokens where possible; in
    a script without spaces (Chinese, Japanese, Thai) its leading characters."""
    marker = f" [{sentence.source_id}]"

    def fits(text: str) -> bool:
        return count_tokens(text + " …" + marker) <= max_tokens

    words = sentence.text.split()
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
) -> Extract:
    """Answer with the best 1-3 cited source sentences, as streaming deltas.

    The deltas concatenate to the answer text; their token total never exceeds max_tokens.
    """
    scored = _rank_sentences(question, sources)
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
            piece = f"{sentence.text} [{sentence.source_id}]"
            cost = count_tokens(piece)
            if max_tokens is not None and used + cost > max_tokens:
                cut = True
                if picked:
                    break
                piece = _shortened(sentence, max_tokens, count_tokens)
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

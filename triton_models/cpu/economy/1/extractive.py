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

REFUSAL = "The sources do not contain an answer to this question."
MAX_SENTENCES = 3
# A sentence after the best one is only added if it scores at least this fraction of the best.
RELATIVE_CUTOFF = 0.5
# Small additive prior for higher-ranked sources (lower id); below any single term's IDF (>= ln 2).
SOURCE_PRIOR = 0.05

TokenCounter = Callable[[str], int]

_WORD_RE = re.compile(r"[^\W_]+")
_SIMPLE_TOKEN_RE = re.compile(r"[^\W_]+|[^\w\s]")
_SEGMENT_RE = re.compile(r"\S+\s*")
_PARAGRAPH_RE = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*\u2022]\s|\d+[.)]\s|#))")
# Latin ends need a space and a capital after them ("e.g. this" goes on); the ideographic
# full stop and fullwidth marks (Chinese, Japanese), the danda and the Arabic question mark
# end a sentence where they stand.
_SENTENCE_END_RE = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])"
    r"|(?<=[\u3002\uff01\uff1f\u0964\u061f])\s*(?=\S)"
)
_VOWELS = frozenset("aeiouy")
# Han ideographs, hiragana, katakana and Hangul syllables.
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_CODE_RE = re.compile(r"^\s*(?:>>>|\.\.\.\s|\$ )")
MAX_SENTENCE_WORDS = 60

_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each either
    else ever every few for from further get gets got had has have having he her here hers him
    his how however i if in into is it its itself just let like me might more most much must my
    myself neither no nor not now of off on once one only or other our ours out over own please
    rather same say says shall she should since so some such tell than that the their theirs them
    then there these they this those through to too under until up upon us very via was we were
    what whatever when where whether which while who whom whose why will with within without
    would yes yet you your yours explain describe give list show s t d ll m re ve
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


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


def _collapse(text: str) -> str:
    return " ".join(text.split())


def parse_prompt(prompt: str) -> tuple[str, list[Source]]:
    """Return (question, sources) from the gateway's prompt, in the contract's format.

    A prompt not in that format is answered as a bare question with no sources.
    """
    question, numbered = prompt_format.parse_prompt(prompt)
    sources = [Source(n, s.text, s.document_id, s.chunk_id) for n, s in numbered.items()]
    return question, sources


def _stem(word: str) -> str:
    """Light stemming: plural s/es/ies, -ing, final e; enough to match close word forms."""
    w = word
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith(("sses", "xes", "ches", "shes", "zes")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 4 and w.endswith("ing") and _VOWELS & set(w[:-3]):
        w = w[:-3]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz" and w[-1] not in _VOWELS:
            w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def content_terms(text: str) -> list[str]:
    """Lowercased, stopword-free, stemmed terms of a text (numbers kept). A run of Chinese
    or Japanese characters, which has no spaces between its words, gives its character
    bigrams instead (as Lucene's CJKBigramFilter does)."""
    terms = []
    for word in _WORD_RE.findall(text.lower()):
        if _CJK_RE.search(word):
            terms += [word[i : i + 2] for i in range(max(len(word) - 1, 1))]
            continue
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        terms.append(_stem(word))
    return terms


def split_sentences(text: str) -> list[str]:
    """Split a chunk into sentences (lines, paragraphs and list items break too)."""
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_RE.split(text):
        flat = _collapse(paragraph)
        if not flat:
            continue
        sentences.extend(s.strip() for s in _SENTENCE_END_RE.split(flat) if s.strip())
    return sentences


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

"""Which sentences of the sources answer a question, scored by the terms they share with it.

The economy tier answers with the best of them (triton_models/cpu/economy); the gateway's
compact prompt keeps each source's best few for a small model (services/gateway/tiers.py).
Standard library only, like the prompt format: the economy model imports it inside Triton.

A sentence's score is the sum, over the question's content terms it holds (its heading's
terms count too: "## json.loads" says what its sentences are about), of ln(1 + n / df), with
n the candidate sentences and df those holding the term (a smoothed IDF: Robertson and
Sparck Jones, 1976), plus a small prior for higher-ranked sources. Given a `similarity`
(the cosine of each sentence's embedding to the question's, in [-1, 1]), it adds
SIMILARITY_WEIGHT times that: terms find the sentences, meaning orders them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from services.contract.prompt import Source
from services.contract.text import content_terms, split_sentences

# A prior for higher-ranked sources, 0.05 / (rank + 1): below any one term's IDF (>= ln 2).
SOURCE_PRIOR = 0.05
# Chosen on `make eval`'s question set (README, "Answer quality"): a cosine of 0.1 weighs as
# much as a term matched in half the sentences.
SIMILARITY_WEIGHT = 10.0
# The sentences best by terms that similarity reorders: the embedder's cost per question
# (about 4 ms a sentence on 2 cores) stays bounded.
RERANK_DEPTH = 16
# Run-on lines (docstrings without full stops) are cut into pieces of this many words.
MAX_SENTENCE_WORDS = 60
# Between the headings of a path (services/retrieval/parsing.py joins them with it).
HEADING_SEPARATOR = " > "
_CODE_RE = re.compile(r"^\s*(?:>>>|\.\.\.\s|\$ )")
_HEADING_RE = re.compile(r"^\s*#+\s*")


@dataclass(frozen=True)
class Sentence:
    """A candidate sentence of the `source`-th text ranked (0: the best-ranked source)."""

    source: int
    order: int  # its place among its source's candidates
    text: str
    heading: str  # the Markdown heading above it in its source; "" for none
    terms: frozenset[str]
    similarity: float = 0.0  # its embedding's cosine to the question's; 0: not measured

    @property
    def said(self) -> str:
        """The sentence after its heading ("heading: sentence"), unless it says it itself."""
        if not self.heading or self.heading.lower() in self.text.lower():
            return self.text
        return f"{self.heading}: {self.text}"


Similarity = Callable[[list[str]], list[float]]


def candidates(text: str, heading: str = "") -> list[tuple[str, str]]:
    """(sentence, heading above it) for the prose of a text, in order; headings ("# ..." or
    a line that is one of `heading`'s) and interactive code (>>>, ..., $) are context, not
    answers. `heading` is the path of the headings the text sits under ("json >
    json.loads"), its innermost the first sentences' heading."""
    found: list[tuple[str, str]] = []
    path = [h.strip() for h in heading.split(HEADING_SEPARATOR)]
    named = {h.casefold() for h in path if h}
    heading = path[-1]
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            heading = _HEADING_RE.sub("", line).strip()
            continue
        if line.strip().casefold() in named:  # a heading as a line of its own (HTML, DOCX)
            continue
        if _CODE_RE.match(line):
            continue
        for sentence in split_sentences(line):
            words = sentence.split()
            for i in range(0, len(words), MAX_SENTENCE_WORDS):
                found.append((" ".join(words[i : i + MAX_SENTENCE_WORDS]), heading))
    return found


def rank(
    question: str,
    texts: Sequence[str],
    similarity: Similarity | None = None,
    headings: Sequence[str] = (),
) -> list[tuple[float, Sentence]]:
    """The sentences of `texts` (best-ranked source first; `headings`, where given, the
    heading path each sits under) that share a content term with
    the question, best first (ties: higher source, then earlier sentence), with their
    scores; a sentence seen before, in any case, is left out. [] for a question without
    content terms. With `similarity`, only the RERANK_DEPTH best by terms, reordered:
    it gets them, each as `Sentence.said`, and gives their cosines to the question."""
    q_terms = set(content_terms(question))
    if not q_terms:
        return []
    sentences: list[Sentence] = []
    seen: set[str] = set()
    for source, text in enumerate(texts):
        above = headings[source] if source < len(headings) else ""
        for order, (sentence, heading) in enumerate(candidates(text, above)):
            key = sentence.lower()
            if key in seen:
                continue
            seen.add(key)
            terms = frozenset(content_terms(f"{heading} {sentence}"))
            sentences.append(Sentence(source, order, sentence, heading, terms))
    n = len(sentences)
    df: dict[str, int] = {}
    for s in sentences:
        for term in s.terms & q_terms:
            df[term] = df.get(term, 0) + 1
    scored = [
        (
            sum(math.log(1.0 + n / df[t]) for t in s.terms & q_terms)
            + SOURCE_PRIOR / (s.source + 1),
            s,
        )
        for s in sentences
        if s.terms & q_terms
    ]
    scored.sort(key=_best_first)
    if similarity is not None and scored:
        del scored[RERANK_DEPTH:]
        cosines = similarity([s.said for _, s in scored])
        scored = [
            (score + SIMILARITY_WEIGHT * c, replace(s, similarity=c))
            for (score, s), c in zip(scored, cosines, strict=True)
        ]
        scored.sort(key=_best_first)
    return scored


def _best_first(item: tuple[float, Sentence]) -> tuple[float, int, int]:
    return (-item[0], item[1].source, item[1].order)


def compact(question: str, sources: Sequence[Source], per_source: int) -> list[Source]:
    """Each source cut to its `per_source` best sentences for the question, in their own
    order, each run of them under its heading ("## heading" on a line above); a source
    with none of the question's terms keeps its first sentence, one without prose is left
    empty. Numbering and order stay, so the answer's [n] still names the same chunk."""
    chosen: dict[int, list[Sentence]] = {}
    texts, headings = [s.text for s in sources], [s.heading for s in sources]
    for _, sentence in rank(question, texts, headings=headings):
        picked = chosen.setdefault(sentence.source, [])
        if len(picked) < per_source:
            picked.append(sentence)
    kept = []
    for i, source in enumerate(sources):
        picked = sorted(chosen.get(i, []), key=lambda s: s.order)
        if not picked:
            picked = [
                Sentence(i, 0, text, heading, frozenset())
                for text, heading in candidates(source.text, source.heading)[:1]
            ]
        kept.append(replace(source, text=_under_headings(picked)))
    return kept


def _under_headings(sentences: Sequence[Sentence]) -> str:
    """The sentences, one line per run under the same heading, each run after its heading."""
    lines: list[str] = []
    heading = None
    for s in sentences:
        if s.heading != heading:
            heading = s.heading
            if heading:
                lines.append(f"## {heading}")
            lines.append(s.text)
        else:
            lines[-1] += f" {s.text}"
    return "\n".join(lines)

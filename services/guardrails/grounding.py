"""Groundedness: the share of an answer's sentences that its sources support.

A claim is a sentence, or the part of one that a citation marker closes ("... [1]" ends a
claim even where the next one starts with a lower-case name, as "json.loads: ..." does). A
claim is supported when at least SUPPORT_SHARE of its content terms
(services/contract/text.py: stopword-free, stemmed, numbers kept) occur in one source the
prompt showed (a claim that mixes two sources is not). Sentences with fewer than
MIN_TERMS content terms ("Yes.", "See [1].") and those that say the sources hold no answer
are left out: they claim nothing. Lexical, like ROUGE-style support checks: it cannot see
a paraphrase with other words, so it errs towards "unsupported" for paraphrases and is a
floor to flag on, not a proof (docs/control-plane.md, "Guardrails").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.contract.prompt import Source
from services.contract.text import content_terms, split_sentences
from services.guardrails.citations import CITATION

SUPPORT_SHARE = 0.6
MIN_TERMS = 3
# A sentence that says the sources hold no answer (the eval scores refusals with it too).
NO_ANSWER = re.compile(
    r"\b(sources?|context|documents?)\b.{0,40}\b(do(es)?n['\u2019]?t|do(es)? not|never)\b"
    r".{0,20}\b(contain|say|mention|cover|answer|include)|\bI (do not|don['\u2019]t) know\b",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=4096)
def _terms(text: str) -> frozenset[str]:
    """A source's content terms: the same chunks come back query after query, so each is
    stemmed once (4096 chunks of ~1 KB: a few MB)."""
    return frozenset(content_terms(text))


@dataclass(frozen=True)
class Grounding:
    """`share` of the `claims` (sentences that claim something) that a source supports;
    None when the answer claims nothing."""

    share: float | None
    claims: int
    supported: int


def groundedness(answer: str, sources: Sequence[Source]) -> Grounding:
    """How well `sources` support `answer` (text, citation markers included). A source's
    heading path is its text too: an answer may name the section it quotes."""
    source_terms = [_terms(f"{s.heading}\n{s.text}") for s in sources]
    claims = supported = 0
    parts = CITATION.split(answer)[::2]  # the text between markers; the odd items are numbers
    for sentence in (s for part in parts for s in split_sentences(part)):
        terms = set(content_terms(sentence))
        if len(terms) < MIN_TERMS or NO_ANSWER.search(sentence):
            continue
        claims += 1
        best = max((len(terms & known) for known in source_terms), default=0)
        supported += best >= SUPPORT_SHARE * len(terms)
    return Grounding(supported / claims if claims else None, claims, supported)

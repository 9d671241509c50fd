"""Plain-text helpers the tiers and the guardrails share: sentences and content terms.

`split_sentences` cuts a text into sentences (lines, paragraphs and list items break
too); `content_terms` gives its lowercased, stopword-free, lightly stemmed terms. The
economy tier (triton_models/cpu/economy) picks answer sentences with them; the gateway's
groundedness check (services/guardrails/grounding.py) measures an answer with them.
"""

from __future__ import annotations

import functools
import re

_WORD_RE = re.compile(r"[^\W_]+")
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


def collapse(text: str) -> str:
    """`text` with each run of whitespace one space, none at either end."""
    return " ".join(text.split())


@functools.lru_cache(maxsize=1 << 16)  # words recur: a lookup costs a tenth of a stem
def _stem(word: str) -> str:
    """Light stemming: plural s/es/ies, -ing, -ed, final e; enough to match close word
    forms ("cached", "caches" and "caching" all give "cach")."""
    w = word
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith(("sses", "xes", "ches", "shes", "zes")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    suffix = next((x for x in ("ing", "ed") if w.endswith(x)), "")
    if suffix and len(w) > len(suffix) + 2 and _VOWELS & set(w[: -len(suffix)]):
        w = w[: -len(suffix)]
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
        flat = collapse(paragraph)
        if not flat:
            continue
        sentences.extend(s.strip() for s in _SENTENCE_END_RE.split(flat) if s.strip())
    return sentences

"""How one answer scores: key facts, refusal, loops, cited chunks. Pure functions, no sockets.

Text is compared normalised: case-folded, Markdown's backticks and emphasis dropped, a
hyphen between two letters read as a space ("least-recently-used" is "least recently
used"), whitespace collapsed. A fact is present where it stands as a whole token: not
inside a longer word ("loads" counts in "json.loads(s)", not in "downloads").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from services.guardrails.grounding import NO_ANSWER  # the gateway's own "no answer" test

_MARKUP = re.compile(r"[`*]")
_LETTER_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")
_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")
# An n-gram of LOOP_NGRAM words, or a line, seen LOOP_REPEATS times is a loop. Shorter
# n-grams flag faithful quotes of the sources' own lists ("a string containing all ASCII
# ..." nine times in the string module's docstring): 4-grams flagged 5 of 80 extractive
# economy answers, each a verbatim quote; 8-grams none.
LOOP_NGRAM = 8
LOOP_REPEATS = 3


def normalise(text: str) -> str:
    text = _LETTER_HYPHEN.sub(" ", _MARKUP.sub("", text.casefold()))
    return " ".join(text.split())


def has_fact(text: str, alternatives: Iterable[str]) -> bool:
    """Any of `alternatives` in `text`, as a whole token, both normalised."""
    body = normalise(text)
    for fact in alternatives:
        wanted = normalise(fact)
        left = r"(?<!\w)" if wanted[:1].isalnum() or wanted[:1] == "_" else ""
        right = r"(?!\w)" if wanted[-1:].isalnum() or wanted[-1:] == "_" else ""
        if wanted and re.search(left + re.escape(wanted) + right, body):
            return True
    return False


def facts_found(text: str, key_facts: Sequence[Sequence[str]]) -> int:
    """How many of the key facts (each a list of alternatives) `text` holds."""
    return sum(has_fact(text, alternatives) for alternatives in key_facts)


def refuses(text: str) -> bool:
    """The answer says its sources hold no answer: the pattern the gateway's groundedness
    check leaves out (services/guardrails/grounding.py), which also matches the economy
    tier's refusal, "The sources do not contain an answer to this question."."""
    return bool(NO_ANSWER.search(text))


def looped(text: str) -> bool:
    """The answer repeats itself: a word LOOP_NGRAM-gram, or a line that holds a letter or
    digit (numbers read alike, so "1", "2", ... "77" count as one line; a code fence's
    "```python" is no line of its own), LOOP_REPEATS times or more."""
    words = _WORD.findall(text.casefold())
    grams = Counter(tuple(words[i : i + LOOP_NGRAM]) for i in range(len(words) - LOOP_NGRAM + 1))
    if grams and max(grams.values()) >= LOOP_REPEATS:
        return True
    lines = Counter(
        _DIGITS.sub("0", " ".join(line.split()).casefold())
        for line in text.splitlines()
        if _WORD.search(line) and not line.lstrip().startswith("```")
    )
    return bool(lines) and max(lines.values()) >= LOOP_REPEATS


def citation_relevant(
    document_id: str, chunk_text: str, documents: Iterable[str], key_facts: Sequence[Sequence[str]]
) -> bool:
    """A cited chunk is relevant when it belongs to one of the question's source documents
    or holds one of its key facts."""
    return document_id in set(documents) or facts_found(chunk_text, key_facts) > 0

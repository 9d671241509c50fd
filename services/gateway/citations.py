"""Which sources an answer rests on: the citations it makes, or the words it shares.

The prompt itself is the tier contract's (services/contract/prompt.py), which the models
read back with the same module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.contract.prompt import Source

_CITATION = re.compile(r"\[(\d{1,3})\]")
_WORD = re.compile(r"[a-z0-9]{3,}")
_COMMON = frozenset((
    "the", "and", "for", "are", "was", "were", "that", "this", "with", "from", "have", "has",
    "not", "but", "can", "you", "your", "its", "any", "all", "use", "used", "using", "into",
    "than", "then", "there", "their", "them", "they", "what", "when", "which", "who", "how",
    "why", "answer", "source", "sources", "question",
))  # fmt: skip


def cited(answer: str, source_count: int) -> list[int]:
    """Source numbers the answer cites as [n] that name a real source, in first-use order."""
    numbers = (int(m) for m in _CITATION.findall(answer))
    return list(dict.fromkeys(n for n in numbers if 1 <= n <= source_count))


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _COMMON


def citations(answer: str, sources: Sequence[Source], most: int = 3) -> list[int]:
    """The sources an answer rests on: those it cites as [n]; if it cites none (small models
    rarely do), those that hold at least half of its content words, best first."""
    numbers = cited(answer, len(sources))
    if numbers:
        return numbers
    words = _words(answer)
    if not words:
        return []
    shared = [(len(words & _words(s.text)), n) for n, s in enumerate(sources, start=1)]
    return [n for count, n in sorted(shared, key=lambda x: -x[0]) if 2 * count >= len(words)][:most]

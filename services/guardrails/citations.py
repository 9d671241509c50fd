"""Which sources an answer rests on, and the citation guardrail: markers name shown sources.

An answer cites source n of its prompt as "[n]" (services/contract/prompt.py numbers them
from 1). A marker counts as a citation where it stands alone: after a space, a line start,
punctuation or another marker, never after a name ("x[0]", "args[2]" are code). A marker
that names no source the prompt showed (0, or past the last) is removed from the answer as
it streams (`CitationFilter`), with the space before it, and the answer is flagged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.contract.prompt import Source
from services.contract.text import content_terms

CITATION = re.compile(r"(?<![\w)])\[(\d{1,3})\]")
_MARKER_WITH_SPACE = re.compile(r"\s*(?<![\w)])\[(\d{1,3})\]")
# The end of a text that may be the start of a marker: held back until the next delta.
_OPEN_END = re.compile(r"\s*(?:(?<![\w)])\[\d{0,3})?$")


def cited(answer: str, source_count: int) -> list[int]:
    """Source numbers the answer cites as [n] that name a real source, in first-use order."""
    numbers = (int(m) for m in CITATION.findall(answer))
    return list(dict.fromkeys(n for n in numbers if 1 <= n <= source_count))


def citations(answer: str, sources: Sequence[Source], most: int = 3) -> list[int]:
    """The sources an answer rests on: those it cites as [n]; if it cites none (small models
    rarely do), those that hold at least half of its content terms, best first."""
    numbers = cited(answer, len(sources))
    if numbers:
        return numbers
    words = set(content_terms(answer))
    if not words:
        return []
    shared = [(len(words & set(content_terms(s.text))), n) for n, s in enumerate(sources, 1)]
    return [n for count, n in sorted(shared, key=lambda x: -x[0]) if 2 * count >= len(words)][:most]


class CitationFilter:
    """Removes, from text that arrives in pieces, every marker naming no source in
    1..`shown`, with the whitespace before it. `removed` counts them.

    `feed(delta)` returns the text that is safe to send now: a trailing "[", "[1" or space
    waits for the next delta (at most a few characters, never a whole token's delay more);
    `close()` returns what is still held.
    """

    def __init__(self, shown: int) -> None:
        self.shown = shown
        self.removed = 0
        self._held = ""
        self._last = ""  # the end of what was sent: what a marker at a delta's start follows

    def feed(self, delta: str) -> str:
        text = self._held + delta
        if "[" not in text:  # most deltas: no marker; only a trailing space may wait
            body = text.rstrip()
            self._held = text[len(body) :]
            self._last = (self._last + body)[-8:]
            return body
        cut = _OPEN_END.search(text)
        at = cut.start() if cut else len(text)
        self._held = text[at:]
        return self._clean(text[:at])

    def close(self) -> str:
        text, self._held = self._held, ""
        return self._clean(text)

    def _clean(self, text: str) -> str:
        joined, sent = self._last + text, len(self._last)

        def keep(match: re.Match[str]) -> str:
            opening = match.start(1) - 1  # where its "[" stands
            if opening < sent or 1 <= int(match.group(1)) <= self.shown:
                return match.group(0)  # judged when it was sent, or a real source
            self.removed += 1
            return joined[match.start() : max(sent, match.start())]  # sent text stays sent

        cleaned = _MARKER_WITH_SPACE.sub(keep, joined)[sent:]
        self._last = (self._last + cleaned)[-8:]  # a marker and the character before it
        return cleaned

"""Which sources an answer rests on, and the citation guardrail: markers name shown sources.

An answer cites source n of its prompt as "[n]" (services/contract/prompt.py numbers them
from 1). A marker counts as a citation where it stands alone: after a space, a line start,
punctuation or another marker, never after a name ("x[0]", "args[2]" are code). A marker
that names no source the prompt showed (0, or past the last) is removed from the answer as
it streams (`CitationFilter`), with the spaces before it, and the answer is flagged; code
keeps its brackets (CitationFilter says how it tells them apart).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.contract.prompt import Source
from services.contract.text import content_terms

CITATION = re.compile(r"(?<![\w)])\[(\d{1,3})\]")


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
    """Removes, from an answer that arrives in pieces, every citation marker naming no source
    in 1..`shown`, with the spaces before it. `removed` counts them.

    A marker is a citation where it follows a word or a sentence's punctuation (`.,;:!?)]`
    and quotes), after spaces or not, or starts the answer; never inside code (a ``` fence
    or `backticks`), after a name or a closing parenthesis with no space (`x[0]`, `f(a)[1]`)
    or after anything else (`= [0]`, `f([9])`, `+ [1]`): those are code. Line breaks stay.

    `feed(delta)` returns the text that is safe to send now: a trailing "[", "[1", space or
    one or two backticks waits for the next delta (a few characters, never a token more);
    `close()` returns what is still held.
    """

    def __init__(self, shown: int) -> None:
        self.shown = shown
        self.removed = 0
        self._held = ""
        self._last = ""  # the last character sent
        self._solid = ""  # the last character sent that is not a space or a line break
        self._fence = False  # inside a ``` block
        self._tick = False  # inside `inline code`

    def feed(self, delta: str) -> str:
        text = self._held + delta
        if "[" not in text and "`" not in text:  # most deltas: only a trailing space waits
            body = text.rstrip(" \t")
            self._held = text[len(body) :]
            self._sent(body)
            return body
        cut = _OPEN_END.search(text)
        at = cut.start() if cut else len(text)
        self._held = text[at:]
        return self._clean(text[:at])

    def close(self) -> str:
        text, self._held = self._held, ""
        return self._clean(text)

    def _clean(self, text: str) -> str:
        out, at = [], 0
        for token in _TOKENS.finditer(text):
            before = text[at : token.start()]
            self._sent(before)
            out.append(before)
            at = token.end()
            kept = self._judge(token)
            self._sent(kept)
            out.append(kept)
        self._sent(text[at:])
        out.append(text[at:])
        return "".join(out)

    def _judge(self, token: re.Match[str]) -> str:
        """What of a code fence, a backtick or a marker is sent."""
        found = token.group(0)
        if found == "```":
            self._fence = not self._fence
            return found
        if found == "`":
            if not self._fence:
                self._tick = not self._tick
            return found
        spaced = found[0] in " \t"
        code = (
            self._fence
            or self._tick
            or (not spaced and (self._last.isalnum() or self._last in "_)"))
            or (self._solid != "" and not (self._solid.isalnum() or self._solid in _CITES_AFTER))
        )
        if code or 1 <= int(token.group(1)) <= self.shown:
            return found
        self.removed += 1
        return ""

    def _sent(self, text: str) -> None:
        if text:
            self._last = text[-1]
            solid = text.rstrip()
            self._solid = solid[-1] if solid else self._solid


# A code fence, a backtick, or a marker with the spaces before it.
_TOKENS = re.compile(r"```|`|[ \t]*\[(\d{1,3})\]")
# The end of a text that may be the start of one: held back until the next delta.
_OPEN_END = re.compile(r"(?:[ \t]*(?:\[\d{0,3})?|`{1,2})$")
_CITES_AFTER = frozenset(".,;:!?)]\"'\u2019\u201d")

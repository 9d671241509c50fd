"""The standard model's loop stop: whether a generated answer has started going round.

The answer's tokens are read as symbols, one at a time: a token is itself, except that a
number (a token of digits alone, spaces around it aside) is the symbol NUMBER, and a run of
such tokens one NUMBER (SmolLM2 reads one token a digit, so "1700000000" is ten tokens and
one number). The answer loops when an n-gram of symbols comes back a third time; where the
n-gram holds a NUMBER, the NUMBER_REPEATS-th time, so that counting ("1, 2, 3, ...", or
"key1", "key2", ...) ends while a list of a few numbers goes on. And one token RUN times in
a row is a loop too ("0x7Fc2222222...", which a run of digits, one NUMBER, would hide), while
the twelve zeros of "1700000000000" are not. Chosen on `make eval`'s question set (README,
"Answer quality"); `ngram` 0 turns it off. Pure Python: the model imports it inside
Triton's python-backend stub.
"""

from __future__ import annotations

NUMBER = -1  # the symbol of a number; token ids are >= 0
REPEATS = 3
# A 6-gram spans two or three numbers of a list ("N , _ N , _"), seen again at each number
# after them: a list of about a dozen numbers passes, counting ends soon after.
NUMBER_REPEATS = 12
RUN = 16


class LoopStop:
    """Reads an answer's tokens one at a time; `closes` says when it went round."""

    def __init__(self, ngram: int) -> None:
        """`ngram`: the n-gram's length in symbols, >= 0 (0: never closes)."""
        if ngram < 0:
            raise ValueError(f"ngram: must be >= 0, got {ngram}")
        self.ngram = ngram
        self._symbols: list[int] = []
        self._seen: dict[tuple[int, ...], int] = {}
        self._last = NUMBER  # the last token, and how many times in a row
        self._run = 0

    def closes(self, token: int, piece: bytes) -> bool:
        """Whether `token` (its text `piece`) makes the answer a loop."""
        if not self.ngram:
            return False
        self._run = self._run + 1 if token == self._last else 1
        self._last = token
        if self._run >= RUN:
            return True
        if piece.strip().isdigit():
            if self._symbols and self._symbols[-1] == NUMBER:
                return False  # the same number goes on
            token = NUMBER
        self._symbols.append(token)
        if len(self._symbols) < self.ngram:
            return False
        gram = tuple(self._symbols[-self.ngram :])
        seen = self._seen[gram] = self._seen.get(gram, 0) + 1
        return seen >= (NUMBER_REPEATS if NUMBER in gram else REPEATS)

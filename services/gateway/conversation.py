"""A conversation's retrieval query: the last question, made self-contained where it refers
back to the turn before it.

"And how hot should the water be?" retrieves nothing useful alone. Where the last question
refers back (a pronoun or demonstrative with nothing in the question to point at, a
follow-up opener such as "and", "what about", or three words or fewer), the query is the
user's previous question, then this one. An LLM rewrite would cost a CPU tier a second or
more per turn; this costs nothing, never drops the question, and is only a retrieval hint:
the model still reads the whole conversation (services/gateway/tiers.py, Tier.prompt).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.contract.prompt import Turn

# English words that point back at an earlier turn.
_REFERRING = re.compile(
    r"\b(it|its|it's|they|them|their|theirs|this|that|these|those|there|he|she|him|her|"
    r"his|hers|one|ones|same|former|latter|above|previous|else|also|too|instead)\b",
    re.IGNORECASE,
)
_FOLLOW_UP = re.compile(r"^\s*(and|but|or|so|also|then|what about|how about)\b", re.IGNORECASE)
_SHORT_WORDS = 3


def refers_back(question: str) -> bool:
    """Whether `question` reads as a follow-up that needs the turn before it."""
    return (
        len(question.split()) <= _SHORT_WORDS
        or bool(_FOLLOW_UP.search(question))
        or bool(_REFERRING.search(question))
    )


def retrieval_query(question: str, history: Sequence[Turn], max_chars: int) -> str:
    """The text retrieval searches with: `question`, preceded by the user's previous turn
    where the question refers back to it (the start of that turn, so that the whole stays
    within `max_chars`); `question` alone otherwise."""
    previous = next((t.content for t in reversed(history) if t.role == "user"), "")
    if not previous.strip() or not refers_back(question):
        return question
    room = max_chars - len(question) - 1
    if room <= 0:
        return question
    return f"{' '.join(previous.split())[:room]}\n{question}"

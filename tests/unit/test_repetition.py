"""The standard model's loop stop (services/contract/repetition.py), on token streams cut
the way SmolLM2 cuts them: one token a digit, words and punctuation on their own."""

from __future__ import annotations

import re

import pytest

from services.contract.repetition import NUMBER_REPEATS, RUN, LoopStop

_PIECES = re.compile(r"\d| ?[A-Za-z_]+|\s+|[^\w\s]")


def _stopped_at(text: str, ngram: int = 6) -> str | None:
    """The text up to the token that closes the loop (left out), or None: never closed."""
    ids: dict[str, int] = {}
    loop = LoopStop(ngram)
    said = ""
    for piece in _PIECES.findall(text):
        token = ids.setdefault(piece, len(ids))
        if loop.closes(token, piece.encode()):
            return said
        said += piece
    return None


def test_a_sentence_said_a_third_time_closes_the_loop() -> None:
    sentence = "The cache can grow without bound. "
    assert _stopped_at(sentence * 2) is None
    stopped = _stopped_at(sentence * 5)
    assert stopped is not None and stopped.startswith(sentence * 2 + "The cache")
    assert len(stopped) < len(sentence * 3)


def test_counting_closes_the_loop_and_a_short_list_does_not() -> None:
    counting = ", ".join(str(n) for n in range(1, 78))
    stopped = _stopped_at(f"data = [{counting}]")
    assert stopped is not None and stopped.startswith("data = [1, 2, 3, 4, 5, 6")
    assert "20" not in stopped
    assert _stopped_at("heapq.nlargest(3, [1, 8, 2, 23, 7, -4, 18, 23, 42, 37, 2])") is None


def test_a_long_number_is_one_symbol_but_one_digit_over_and_over_is_a_loop() -> None:
    assert _stopped_at("The largest is 9223372036854775807, and 1700000000000 seconds.") is None
    assert _stopped_at("hex_digest: 0x7Fc" + "2" * 200) == "hex_digest: 0x7Fc" + "2" * (RUN - 1)


def test_nested_keys_close_the_loop() -> None:
    nested = "".join(f'{"  " * n}"key{n}": {{\n' for n in range(1, 40))
    stopped = _stopped_at(nested)
    assert stopped is not None and stopped.count("key") <= NUMBER_REPEATS + 2


def test_zero_never_closes_and_a_negative_n_is_refused() -> None:
    assert _stopped_at("again " * 50, ngram=0) is None
    with pytest.raises(ValueError, match="ngram"):
        LoopStop(-1)

"""Unit tests of the sentence scoring the economy tier and the compact prompt share."""

from __future__ import annotations

import pytest

from services.contract import relevance
from services.contract.prompt import Source

JSON_DOC = (
    "## json.loads\nDeserialize a JSON document to a Python object. "
    "It raises JSONDecodeError on invalid input.\n"
    "## json.dumps\nSerialize an object to a JSON formatted string. "
    "Use separators for the most compact output."
)
OTHER = "The gateway listens on port 8443. Requests are routed to the nearest region."


def test_terms_find_the_sentence_and_its_heading_counts() -> None:
    ranked = relevance.rank("What does json.loads do?", [JSON_DOC, OTHER])
    best = ranked[0][1]
    assert best.heading == "json.loads" and best.text.startswith("Deserialize")
    assert best.said == "json.loads: Deserialize a JSON document to a Python object."
    assert all(s.source == 0 for _, s in ranked)  # the other source shares no term


def test_similarity_reorders_only_the_best_by_terms() -> None:
    """The cosines come in for the RERANK_DEPTH best by terms, in that order, and move a
    sentence with fewer shared terms ahead when it means more."""
    asked: list[list[str]] = []

    def cosines(said: list[str]) -> list[float]:
        asked.append(said)
        return [0.9 if "compact" in s else 0.1 for s in said]

    ranked = relevance.rank("compact JSON string", [JSON_DOC], cosines)
    assert ranked[0][1].text == "Use separators for the most compact output."
    assert ranked[0][1].similarity == 0.9
    assert len(asked) == 1 and len(asked[0]) == len(ranked) <= relevance.RERANK_DEPTH
    many = "\n".join(f"Sentence {i} about caching." for i in range(40))
    assert len(relevance.rank("caching", [many], lambda s: [0.0] * len(s))) == (
        relevance.RERANK_DEPTH
    )


def test_a_question_without_content_terms_ranks_nothing() -> None:
    assert relevance.rank("What is it?", [JSON_DOC]) == []


def test_compact_keeps_numbering_headings_and_the_best_sentences() -> None:
    sources = [Source("a", "a:0", JSON_DOC), Source("b", "b:0", OTHER, suspect=True)]
    kept = relevance.compact("How do I get compact JSON from json.dumps?", sources, 1)
    assert [(s.document_id, s.chunk_id, s.suspect) for s in kept] == [
        ("a", "a:0", False),
        ("b", "b:0", True),
    ]
    assert kept[0].text == "## json.dumps\nUse separators for the most compact output."
    # No shared term: the first sentence stays, so [2] still shows what the chunk is.
    assert kept[1].text == "The gateway listens on port 8443."


@pytest.mark.parametrize("per_source", [2, 3])
def test_compact_keeps_document_order_across_headings(per_source: int) -> None:
    kept = relevance.compact("JSON document string", [Source("a", "a:0", JSON_DOC)], per_source)
    lines = kept[0].text.splitlines()
    assert lines[0] == "## json.loads" and lines[2] == "## json.dumps"
    assert len(relevance.candidates(kept[0].text)) == per_source


def test_a_chunk_without_its_heading_line_takes_its_heading_path() -> None:
    """A section's later chunks lack the heading's own line; the path says it."""
    sources = [
        Source("json", "json#4", "Deserialize a JSON document.", heading="json > json.loads")
    ]
    best = relevance.rank(
        "deserialize JSON", [s.text for s in sources], headings=["json > json.loads"]
    )
    assert best[0][1].said == "json.loads: Deserialize a JSON document."
    kept = relevance.compact("deserialize JSON", sources, 1)
    assert kept[0].text == "## json.loads\nDeserialize a JSON document."


def test_a_heading_kept_as_a_line_of_its_section_is_no_answer():
    """HTML and DOCX sections start with their heading as a plain line: context, as a
    Markdown "# ..." line is, never a sentence to quote."""
    text = "Quokka diet\n\nQuokkas eat leaves and grasses.\n\n# Water\n\nThey rarely drink."
    assert relevance.candidates(text, "Quokka feeding rota > Quokka diet") == [
        ("Quokkas eat leaves and grasses.", "Quokka diet"),
        ("They rarely drink.", "Water"),
    ]

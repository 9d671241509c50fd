import itertools

from services.retrieval.chunking import chunk_text, sentences


def test_sentences_split_on_ends_and_paragraphs():
    assert sentences("One. Two!  Three?\n\nFour\nstill four") == [
        "One.",
        "Two!",
        "Three?",
        "Four still four",
    ]


def test_chunks_respect_size_and_overlap():
    text = " ".join(f"Sentence {i} has five words." for i in range(40))
    chunks = chunk_text(text, chunk_words=30, overlap_words=10)
    assert len(chunks) > 5
    assert all(len(c.split()) <= 30 for c in chunks)
    for previous, current in itertools.pairwise(chunks):
        # each chunk starts with the tail of the previous one
        first_sentence = current.split(".")[0] + "."
        assert first_sentence in previous
    # every sentence survives somewhere
    joined = " ".join(chunks)
    assert all(f"Sentence {i} " in joined for i in range(40))


def test_long_sentence_is_split_and_empty_text_gives_nothing():
    assert [len(c.split()) for c in chunk_text("w " * 100, 40, 10)] == [40, 40, 20]
    assert chunk_text("   \n ", 40, 10) == []
    assert chunk_text("Short.", 40, 10) == ["Short."]

# ruff: noqa: RUF001  (the fullwidth punctuation of Chinese and Japanese is the point)
import dataclasses
import itertools
import random

import pytest
from multilingual import FACT, JA, MIXED, TH, ZH
from uniseg.graphemecluster import grapheme_clusters
from uniseg.sentencebreak import sentence_boundaries

from services.config.loading import ConfigError
from services.config.mesh import MeshConfig
from services.config.retrieval import RetrievalConfig
from services.retrieval.chunking import Chunker, _sentence_bounds, sentences
from services.retrieval.parsing import MARKDOWN, Section, parse


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    """The mesh's own: the embedder's tokenizer, config/mesh.yaml's sizes."""
    return Chunker.from_config(RetrievalConfig())


def small(chunker: Chunker, tokens: int, overlap: int, chars: int = 2048) -> Chunker:
    return dataclasses.replace(
        chunker, chunk_tokens=tokens, overlap_tokens=overlap, chunk_chars=chars
    )


def corpus(parts: list[str], sentences_: int, joiner: str = "") -> str:
    """`sentences_` sentences cycling through `parts`, each numbered, so none repeats."""
    return joiner.join(f"{i}{parts[i % len(parts)]}" for i in range(sentences_))


def assert_bounded_and_whole(chunker: Chunker, text: str, chunks: list[str]) -> None:
    """Every chunk within both bounds by the embedder's own count; every piece of the text
    in some chunk, and the pieces are the whole text (whitespace aside)."""
    assert chunks
    for chunk in chunks:
        assert chunker.count(chunk) <= chunker.chunk_tokens
        assert len(chunk) <= chunker.chunk_chars
    lines = {line for chunk in chunks for line in chunk.split("\n")}
    pieces = [p.text for p in chunker.pieces(text)]
    assert set(pieces) <= lines
    assert "".join(pieces).replace(" ", "") == "".join(text.split())


def test_sentences_split_on_ends_and_paragraphs():
    assert sentences("One. Two!  Three?\n\nFour\nstill four") == [
        "One.",
        "Two!",
        "Three?",
        "Four still four",
    ]


def test_sentences_end_at_the_terminators_of_any_script():
    assert sentences("长江很长。黄河很黄！泰山高吗？最后") == [
        "长江很长。",
        "黄河很黄！",
        "泰山高吗？",
        "最后",
    ]
    assert sentences("नमस्ते दुनिया। दूसरा वाक्य॥ هل هذا سؤال؟ نعم.") == [
        "नमस्ते दुनिया।",
        "दूसरा वाक्य॥",
        "هل هذا سؤال؟",
        "نعم.",
    ]
    # Unicode's rules, not any full stop: a decimal point or "e.g." before lower case
    assert sentences("It is 3.5 m tall, e.g. this one. Next") == [
        "It is 3.5 m tall, e.g. this one.",
        "Next",
    ]


def test_headings_list_items_and_code_prompts_stay_pieces_of_their_own():
    text = (
        "# Title\nSome text. More.\n- item one\n- item two\n>>> print(1)\n1\n\n"
        "## json.loads\nParse."
    )
    assert sentences(text) == [
        "# Title",
        "Some text.",
        "More.",
        "- item one",
        "- item two",
        ">>> print(1) 1",
        "## json.loads",
        "Parse.",
    ]


def test_a_chunk_never_crosses_a_page_or_a_heading(chunker):
    source = "".join(
        f"## Part {p}\n\n" + " ".join(f"Fact {p}.{i} is told here." for i in range(p * 12)) + "\n\n"
        for p in range(4)
    )
    sections = parse(source.encode(), MARKDOWN).sections
    placed = small(chunker, 40, 10).placed(sections)
    for chunk in placed:
        heading = sections[chunk.section].heading
        own = (f"## {heading}", f"Fact {heading[-1]}.")
        assert all(line.startswith(own) for line in chunk.text.split("\n")), chunk
    assert [c.text for c in placed if c.section == 0] == ["## Part 0"]  # a heading alone
    assert {c.section for c in placed} == {0, 1, 2, 3}
    pages = [Section("A sentence ends on", page=1), Section("the next page. Page two.", page=2)]
    assert chunker.placed(pages) == [("A sentence ends on", 0), ("the next page.\nPage two.", 1)]


def test_the_deciding_characters_give_uniseg_s_own_boundaries():
    """_sentence_bounds runs uniseg on a reduced text; it must equal uniseg on the whole."""
    groups = ["abc", "ABC", "123", ".", "?!", "。！？।؟", " ", ")\"'»", "(«", ",;:-", "*#%—"]
    groups += ["\u0301\u200b\u00ad", "中あカก"]
    rng = random.Random(29)
    for _ in range(600):
        weights = [rng.random() for _ in groups]
        text = "".join(rng.choice(rng.choices(groups, weights)[0]) for _ in range(80))
        block = " ".join(text.split())
        if block:
            assert _sentence_bounds(block) == list(sentence_boundaries(block)), block


def test_chunks_respect_size_and_overlap(chunker):
    text = " ".join(f"Sentence {i} has five words." for i in range(40))  # 6 tokens each
    sized = small(chunker, tokens=36, overlap=12)
    chunks = sized.chunks(text)
    assert len(chunks) > 5
    assert all(sized.count(c) <= 36 for c in chunks)
    # a long sentence does not fit beside the overlap: the overlap gives way
    long = "This one is long " + "and long " * 13 + "indeed."  # 32 tokens
    assert all(sized.count(c) <= 36 for c in sized.chunks(f"{text} {long} {text}"))
    for previous, current in itertools.pairwise(chunks):
        # each chunk starts with the tail of the previous one
        first_sentence = current.split(".")[0] + "."
        assert first_sentence in previous
    # every sentence survives somewhere
    joined = " ".join(chunks)
    assert all(f"Sentence {i} " in joined for i in range(40))


def test_long_sentence_is_split_and_empty_text_gives_nothing(chunker):
    sized = small(chunker, tokens=40, overlap=10)
    assert [len(c.split()) for c in sized.chunks("w " * 100)] == [40, 40, 20]
    assert sized.chunks("   \n ") == []
    assert sized.chunks("Short.") == ["Short."]


def test_english_prose_keeps_its_lines_and_size(chunker):
    """Headings, code and list items one to a line; a chunk about as long as before (at
    most 120 words then; 160 tokens now, 1.1 tokens a word in this text)."""
    prose = " ".join(f"This is sentence number {i} of a long paragraph." for i in range(60))
    text = f"# Guide\n\n{prose}\n\n>>> import json\n\n- first item\n- second item\n"
    chunks = chunker.chunks(text)
    assert chunks[0].startswith("# Guide\nThis is sentence number 0 ")
    assert ">>> import json\n- first item\n- second item" in chunks[-1]
    assert all(100 <= len(c.split()) <= 150 for c in chunks[:-1])
    assert_bounded_and_whole(chunker, text, chunks)


@pytest.mark.parametrize(
    ("parts", "joiner"),
    [(ZH, ""), (JA, ""), (TH, " "), (MIXED, " ")],
    ids=["chinese", "japanese", "thai", "mixed"],
)
def test_text_without_spaces_is_chunked_with_both_bounds(chunker, parts, joiner):
    text = corpus(parts, 240, joiner)
    chunks = chunker.chunks(text)
    assert len(chunks) > 3
    assert_bounded_and_whole(chunker, text, chunks)


@pytest.mark.parametrize("where", ["start", "end"])
def test_a_fact_anywhere_in_chinese_prose_is_whole_in_a_small_chunk(chunker, where):
    prose = corpus(ZH, 110)  # about 3,000 characters
    text = f"{FACT}{prose}" if where == "start" else f"{prose}{FACT}"
    chunks = chunker.chunks(text)
    assert len(text) > 3000 and len(chunks) > 10
    assert any(FACT in c for c in chunks)
    assert_bounded_and_whole(chunker, text, chunks)


def test_a_70000_character_chinese_document_is_chunked(chunker):
    text = corpus(ZH, 2420)
    assert len(text) > 70_000
    assert_bounded_and_whole(chunker, text, chunker.chunks(text))


@pytest.mark.parametrize(
    "run",
    [
        "ภาษาไทยไม่มีช่องว่างระหว่างคำ" * 300,  # one [UNK] token for thousands of characters
        "これはテストです" * 600,  # kana: one [UNK] past 100 characters
        "नमस्ते" * 900,  # conjuncts: clusters of several code points
        "a\u0301e\u0301" * 2000,  # combining accents
        "👨‍👩‍👧🇫🇷" * 500,  # emoji ZWJ sequences and flags
        "中文没有句号" * 2000,  # ideographs, no sentence end at all
    ],
    ids=["thai", "kana", "devanagari", "accents", "emoji", "ideographs"],
)
def test_a_run_longer_than_a_chunk_is_cut_between_grapheme_clusters(chunker, run):
    run = f"b{run}"  # so that no cut falls on a cluster boundary by the runs' period alone
    clusters = set(grapheme_clusters(run))
    pieces = chunker.pieces(run)
    assert len(pieces) > 1
    for piece in pieces:
        assert set(grapheme_clusters(piece.text)) <= clusters
        assert piece.tokens == chunker.count(piece.text)
    assert_bounded_and_whole(chunker, run, chunker.chunks(run))


def test_the_embedded_title_is_cut_so_the_embedder_reads_every_chunk_whole(chunker):
    chunk = "\n".join(["One more sentence."] * (chunker.chunk_tokens // 4))
    assert chunker.count(chunk) == chunker.chunk_tokens
    assert chunker.embedding_text("Short title", chunk) == f"Short title\n{chunk}"
    assert chunker.embedding_text("", chunk) == chunk
    for title in ("A very long title of many words " * 20, "長い題名" * 200, "x" * 1000):
        embedded = chunker.embedding_text(title, chunk)
        assert embedded.endswith(f"\n{chunk}")
        head = embedded.removesuffix(f"\n{chunk}")
        assert head and title.startswith(head)
        assert chunker.count(head) <= chunker.title_tokens
        assert chunker.count(embedded) + 2 <= RetrievalConfig().embedder_tokens


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"chunk_tokens": 200}, "retrieval.chunk_tokens"),  # 200 + 64 + 2 > 256
        ({"title_tokens": 100}, "retrieval.chunk_tokens"),
        ({"overlap_tokens": 160}, "retrieval.overlap_tokens"),
        ({"chunk_chars": 20_000}, "retrieval.chunk_chars"),
        ({"chunk_chars": 100}, "retrieval.chunk_chars"),
        ({"title_tokens": 0}, "retrieval.title_tokens"),
    ],
)
def test_bad_chunk_sizes_name_the_field(values, field):
    with pytest.raises(ConfigError, match=field):
        MeshConfig.from_dict({"retrieval": values})

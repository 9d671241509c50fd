# ruff: noqa: RUF001  (text in many scripts, on purpose)
"""Prompts fitted to a tier's window, counted with its model's own tokenizer."""

import pytest

from services.common import tokens
from services.common.errors import InvalidArgument
from services.config.gateway import SMOLLM2_TOKENIZER, GatewayConfig, TierConfig
from services.contract.prompt import Source, plain_prompt
from services.gateway.tiers import Tier, Tiers

TEMPLATE = 37


def _tier(context_tokens: int, tokenizer: str = SMOLLM2_TOKENIZER, sentences: int = 0) -> Tier:
    config = TierConfig(
        model="m",
        context_tokens=context_tokens,
        tokenizer=tokenizer,
        template_tokens=TEMPLATE,
        source_sentences=sentences,
    )
    return Tier("small", config, endpoints=[], count=tokens.counter(tokenizer))


def _size(tier: Tier, prompt: str) -> int:
    return tier.count(prompt) + TEMPLATE


def test_sources_are_trimmed_lowest_rank_first_and_question_kept():
    tier = _tier(1024)
    sources = [Source(f"d{i}", f"d{i}#0", "word " * 200) for i in range(5)]
    fitted = tier.prompt("what is it?", sources, max_tokens=256)
    assert _size(tier, fitted.prompt) <= 1024 - 256 and fitted.max_tokens == 256
    assert 'document="d1"' in fitted.prompt and 'document="d2"' not in fitted.prompt
    assert fitted.sources == 2  # a third would need 777 tokens of the 768 left
    assert fitted.prompt.endswith("Question: what is it?\nAnswer:")


def test_a_tier_with_source_sentences_reads_the_relevant_ones_under_the_same_numbers():
    """The small model reads each source's best sentences: a few hundred tokens, not the
    whole chunks, and [n] still names the n-th source."""
    filler = " ".join(f"Unrelated remark number {i} about the weather." for i in range(30))
    sources = [
        Source("json", "json#3", f"## json.loads\n{filler} Deserialize a JSON document. {filler}"),
        Source("other", "other#0", f"{filler} It rains."),
    ]
    whole = _tier(2048).prompt("How do I deserialize JSON?", sources, max_tokens=256)
    fitted = _tier(2048, sentences=2).prompt("How do I deserialize JSON?", sources, 256)
    assert fitted.sources == 2 and whole.sources == 2
    assert tokens.bound(fitted.prompt) * 5 < tokens.bound(whole.prompt)
    assert '<source id="1" document="json" chunk="json#3">\n## json.loads\n' in fitted.prompt
    assert "Deserialize a JSON document." in fitted.prompt
    assert '<source id="2" document="other" chunk="other#0">' in fitted.prompt


@pytest.mark.parametrize(
    "question",
    [
        "中文问题，没有空格，每个字都是一个或多个词元。" * 52,  # 1,196 characters, 1,863 tokens
        "😀🎉👍🏽" * 150,  # 600 characters, 1,841 tokens: emoji take several each
        "1234567890" * 185,  # 1,850 digits: one token each in SmolLM2
    ],
    ids=["chinese", "emoji", "digits"],
)
def test_a_question_that_fits_alone_drops_the_sources_not_the_question(question):
    """Counted with the model's tokenizer, not from characters: the sources go first, then
    the answer gets what is left of the window (and its finish_reason says "length")."""
    tier = _tier(2048)
    alone = _size(tier, plain_prompt(question))
    assert 2048 - 256 < alone < 2048, alone  # fits only without sources and a full answer
    sources = [Source(f"d{i}", f"d{i}#0", "Some source text. " * 40) for i in range(4)]
    fitted = tier.prompt(question, sources, max_tokens=256)
    assert fitted.sources == 0
    assert fitted.max_tokens == 2048 - _size(tier, fitted.prompt) > 0


def test_too_long_question_or_max_tokens_is_invalid():
    with pytest.raises(InvalidArgument, match=r"^query: \d+ tokens"):
        _tier(256).prompt("why " * 400, [], max_tokens=16)
    with pytest.raises(InvalidArgument, match=r"^query: "):
        _tier(2048).prompt("中文" * 1500, [], max_tokens=16, grounded=False)
    with pytest.raises(InvalidArgument, match=r"^max_tokens: "):
        _tier(256).prompt("why", [], max_tokens=256 - TEMPLATE)


def test_without_a_tokenizer_the_count_is_a_bound_never_low():
    question = "中文问题" * 100
    bytes_tier, real = _tier(4096, tokenizer=""), _tier(4096)
    assert bytes_tier.count(question) >= real.count(question)
    unknown = Tiers(GatewayConfig(tiers={"x": {"model": "x"}}, default_tier="x")).get("x")
    assert unknown.count("é") == 3  # two bytes, and one for a SentencePiece word-start marker


def test_the_shipped_tiers_count_with_their_models_tokenizers():
    tiers = Tiers(GatewayConfig())
    standard, economy = tiers.get("standard"), tiers.get("economy")
    assert standard.count("1234") == 4  # SmolLM2 reads digits one by one
    assert economy.count("hello world") == 2  # MiniLM's WordPiece
    with pytest.raises(ValueError, match=r"gateway\.tiers\.x\.tokenizer"):
        Tiers(
            GatewayConfig(
                tiers={"x": {"model": "x", "tokenizer": "/no/such.json"}}, default_tier="x"
            )
        )


def test_unknown_tier_and_bad_version_name_the_field():
    tiers = Tiers(GatewayConfig())
    assert tiers.get("").name == "standard"
    assert tiers.get("economy").config.model == "economy"
    with pytest.raises(InvalidArgument, match=r"^tier: unknown tier 'gold'"):
        tiers.get("gold")
    for bad in ("v2", "²", "\u0661", "-1", "9" * 19, " 2"):  # isdigit() takes the 2nd, 3rd
        with pytest.raises(InvalidArgument, match=r"^model_version: "):
            tiers.get("economy").version(bad)
    assert tiers.get("economy").version("2") == "2"
    assert tiers.get("economy").version("9" * 18) == "9" * 18


def test_tiers_from_yaml_mappings_and_default_must_exist():
    config = GatewayConfig(
        tiers={"premium": {"model": "ensemble", "target": "gpu:8001"}}, default_tier="premium"
    )
    assert config.tiers["premium"] == TierConfig(model="ensemble", target="gpu:8001")
    with pytest.raises(ValueError, match=r"gateway\.default_tier"):
        GatewayConfig(tiers={"economy": {"model": "economy"}}, default_tier="standard")


@pytest.mark.parametrize(
    ("tier", "field"),
    [
        ({"model": "m", "source_sentences": -1}, "source_sentences"),
        ({"model": "m", "source_sentences": 101}, "source_sentences"),
    ],
)
def test_source_sentences_out_of_range_name_the_field(tier, field):
    with pytest.raises(ValueError, match=rf"gateway\.tiers\.(x\.)?{field}"):
        GatewayConfig(tiers={"x": tier}, default_tier="x")

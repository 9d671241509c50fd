import pytest

from services.common.errors import InvalidArgument
from services.gateway.config import GatewayConfig, TierConfig
from services.gateway.prompt import Source
from services.gateway.tiers import CHARS_PER_TOKEN, Tier, Tiers


def _tier(context_tokens: int) -> Tier:
    return Tier("small", TierConfig(model="m", context_tokens=context_tokens), endpoints=[])


def test_sources_are_trimmed_lowest_rank_first_and_question_kept():
    sources = [Source(f"d{i}", f"d{i}#0", "word " * 200) for i in range(5)]
    prompt = _tier(1024).prompt("what is it?", sources, max_tokens=256)
    assert len(prompt) / CHARS_PER_TOKEN <= 1024 - 256
    assert 'document="d0"' in prompt and 'document="d4"' not in prompt
    assert prompt.endswith("Question: what is it?\nAnswer:")


def test_too_long_question_or_max_tokens_is_invalid():
    with pytest.raises(InvalidArgument, match=r"^query: too long"):
        _tier(256).prompt("why " * 400, [], max_tokens=16)
    with pytest.raises(InvalidArgument, match=r"^max_tokens: "):
        _tier(256).prompt("why", [], max_tokens=256)


def test_unknown_tier_and_bad_version_name_the_field():
    tiers = Tiers(GatewayConfig())
    assert tiers.get("").name == "standard"
    assert tiers.get("economy").config.model == "economy"
    with pytest.raises(InvalidArgument, match=r"^tier: unknown tier 'gold'"):
        tiers.get("gold")
    with pytest.raises(InvalidArgument, match=r"^model_version: "):
        tiers.get("economy").version("v2")
    assert tiers.get("economy").version("2") == "2"


def test_tiers_from_yaml_mappings_and_default_must_exist():
    config = GatewayConfig(
        tiers={"premium": {"model": "ensemble", "target": "gpu:8001"}}, default_tier="premium"
    )
    assert config.tiers["premium"] == TierConfig(model="ensemble", target="gpu:8001")
    with pytest.raises(ValueError, match=r"gateway\.default_tier"):
        GatewayConfig(tiers={"economy": {"model": "economy"}}, default_tier="standard")

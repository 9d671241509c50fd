"""The gateway's degradation policy, with fake retrieval and fake models.

Retrieval down or late -> a fresh cached answer, else an answer without sources (or refuse);
a tier down -> its fallback tier; a local Triton down -> another region's; a stream that
fails or stalls after its first token -> continued on another region's, where its tier
allows, else an error, never a clean end.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from services.config.gateway import GatewayConfig, TierConfig
from services.contract.documents import Document
from services.gateway.core import GatewayCore
from services.gateway.retrieval_client import Chunk, Found, Written
from services.gateway.tiers import Tiers
from services.gateway.values import BYPASS, HIT, MISS, Answer, Call, GenerateParams
from services.triton.llm import Delta

LOCAL, REMOTE = "triton.local:8001", "triton.remote:8001"


class FakeRetrieval:
    def __init__(self) -> None:
        self.down: Exception | None = None
        self.version = "7"
        self.calls = 0
        self.asked: list[tuple[float, bool]] = []  # (timeout_s, degradable) of each call

    async def search(self, tenant, query, top_k, filters, timeout_s, *, degradable=False) -> Found:
        self.calls += 1
        self.asked.append((timeout_s, degradable))
        if self.down is not None:
            raise self.down
        return Found([Chunk("tea", "tea#0", 0.9, "Brew at 80 C.", "Tea", {})], self.version)


class FakeLLM:
    """A Triton target; `broken` models fail before their first delta, `cut` after it
    (with `failure`), `unknown` versions are refused as Triton refuses them."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.broken: set[str] = set()
        self.cut: set[str] = set()
        self.failure: Exception = Unavailable("llm unavailable: stub died")
        self.cut_after_s = 0.0
        self.frozen: set[str] = set()  # these stop sending after their first delta
        self.prefixes: list[str] = []
        self.stalled: set[str] = set()
        self.unknown: set[str] = set()
        self.whole_first = False  # the first delta holds the whole answer (max_tokens)
        self.fail_after_end = False  # the stream fails after its last delta
        self.said_all = False  # a continuation has nothing to add: it only ends the answer
        self.prompts: list[tuple[str, str]] = []
        self.streamed: list[bool] = []
        self.max_tokens: list[int] = []

    async def stream(self, model, version, prompt, sampling, **kwargs) -> AsyncIterator[Delta]:
        self.prompts.append((model, prompt))
        self.streamed.append(kwargs["stream"])
        self.max_tokens.append(sampling.max_tokens)
        self.prefixes.append(kwargs.get("prefix", ""))
        if version in self.unknown:
            raise NotFound(f"model_version: {model} has no version {version} being served")
        if model in self.broken:
            raise Unavailable(f"llm unavailable: {model} at {self.target} is down")
        if model in self.stalled:  # the call runs out of the time it was given
            await asyncio.sleep(kwargs["timeout_s"])
            raise DeadlineExceeded("generation timed out")
        if kwargs.get("prefix"):  # a continuation: what follows "<model>@<target> says"
            if self.said_all:
                yield Delta("", 12, 0, "1", finish_reason="stop")
                return
            if model in self.cut:
                yield Delta(" hello", 12, 1, "1")
                raise self.failure
            yield Delta(" hello [1]", 12, 1, "1", finish_reason="length")
            return
        first = sampling.max_tokens if self.whole_first else 1
        yield Delta(f"{model}@{self.target} says", 10, first, "1")
        if model in self.frozen:
            await asyncio.sleep(kwargs["timeout_s"])
        if model in self.cut:
            await asyncio.sleep(self.cut_after_s)
            raise self.failure
        yield Delta(" hello [1]", 10, 2, "1", finish_reason="length")
        if self.fail_after_end:
            raise self.failure

    async def close(self) -> None:
        pass


@pytest.fixture
def gateway(request):
    """A core on fake retrieval and models; retrieval is asked first on every request unless
    the test is marked `fresh(seconds)` (corpus_version_fresh_s)."""
    marker = request.node.get_closest_marker("fresh")
    return _gateway(
        GatewayConfig(
            triton_target=LOCAL,
            triton_fallback_targets=[REMOTE],
            breaker_failures=2,
            corpus_version_fresh_s=marker.args[0] if marker else 0.0,
        )
    )


def _gateway(config: GatewayConfig):
    llms: dict[str, FakeLLM] = {}

    def client(target: str) -> FakeLLM:
        return llms.setdefault(target, FakeLLM(target))

    retrieval = FakeRetrieval()
    core = GatewayCore(config, retrieval, Tiers(config, client))  # type: ignore[arg-type]
    return core, retrieval, llms


async def _ask(
    core: GatewayCore, tenant: str = "demo", stream: bool = True, **params
) -> tuple[list[str], Answer]:
    call = Call.start(tenant, 10.0)
    asked = GenerateParams(query="How hot?", **params)
    events = [e async for e in core.generate(call, asked, stream=stream)]
    *texts, answer = events
    assert isinstance(answer, Answer)
    return texts, answer


async def test_an_answer_is_cached_per_tenant_and_corpus_version(gateway) -> None:
    core, retrieval, llms = gateway
    _, first = await _ask(core)
    assert (first.cache_status, first.degraded, first.tier) == (MISS, False, "standard")
    assert [c.document_id for c in first.citations] == ["tea"]
    texts, again = await _ask(core)
    assert (again.cache_status, again.text, "".join(texts)) == (HIT, first.text, first.text)
    assert len(llms[LOCAL].prompts) == 1  # the model answered once
    _, other = await _ask(core, tenant="other")
    assert other.cache_status == MISS  # never another tenant's answer
    retrieval.version = "8"
    assert (await _ask(core))[1].cache_status == MISS  # a new corpus version, a new answer
    _, sampled = await _ask(core, temperature=0.7)
    assert sampled.cache_status == BYPASS
    assert (await _ask(core, bypass_cache=True))[1].cache_status == BYPASS


@pytest.mark.fresh(0.3)
async def test_an_exact_hit_on_a_fresh_corpus_version_skips_retrieval(gateway) -> None:
    core, retrieval, llms = gateway
    await _ask(core)
    _, hit = await _ask(core)
    assert (hit.cache_status, hit.cache_match.kind, retrieval.calls) == (HIT, "exact", 1)
    # Another gateway's ingest is seen once the version is no longer fresh: never later.
    retrieval.version = "8"
    assert (await _ask(core))[1].cache_status == HIT  # within corpus_version_fresh_s
    await asyncio.sleep(0.35)
    assert (await _ask(core))[1].cache_status == MISS
    assert retrieval.calls == 2

    # An ingest through this gateway is seen at once.
    async def upsert(tenant, documents, timeout_s):
        retrieval.version = "9"
        return Written(len(documents), 1, "9")

    retrieval.upsert = upsert
    assert (await _ask(core))[1].cache_status == HIT  # "8" is fresh again
    await core.ingest(Call.start("demo", 10.0), [Document("tea", "Tea", "Brew at 70 C.")])
    assert (await _ask(core))[1].cache_status == MISS
    assert len(llms[LOCAL].prompts) == 3


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (Unavailable("retrieval unavailable: UNAVAILABLE"), "retrieval unavailable"),
        (DeadlineExceeded("late"), "retrieval late"),
    ],
)
async def test_retrieval_down_serves_a_fresh_cached_answer(gateway, failure, cause) -> None:
    core, retrieval, _ = gateway
    _, healthy = await _ask(core)
    retrieval.down = failure
    _, degraded = await _ask(core)
    assert degraded.text == healthy.text and degraded.cache_status == HIT
    assert degraded.degraded_reason == f"{cause}: answer from cache"


async def test_retrieval_down_without_a_cached_answer_answers_without_sources(gateway) -> None:
    core, retrieval, llms = gateway
    retrieval.down = Unavailable("retrieval unavailable: UNAVAILABLE")
    _, answer = await _ask(core)
    assert answer.degraded_reason == "retrieval unavailable: answered without sources"
    assert answer.citations == [] and answer.corpus_version == ""
    assert "Brew at 80 C." not in llms[LOCAL].prompts[-1][1]
    assert answer.cache_status == MISS  # looked up, and a degraded answer is never stored
    retrieval.down = None
    assert (await _ask(core))[1].cache_status == MISS


async def test_an_open_retrieval_breaker_skips_the_call(gateway) -> None:
    core, retrieval, _ = gateway
    retrieval.down = Unavailable("retrieval unavailable: UNAVAILABLE")
    for _ in range(2):
        await _ask(core)
    calls = retrieval.calls
    _, answer = await _ask(core)
    assert retrieval.calls == calls
    assert answer.degraded_reason == "retrieval breaker open: answered without sources"


async def test_a_clients_short_deadline_does_not_count_against_retrieval(gateway) -> None:
    core, retrieval, _ = gateway
    retrieval.down = DeadlineExceeded("late")
    for _ in range(3):  # each request has less time than retrieval's own budget
        call = Call.start("demo", core.config.retrieval_timeout_s / 2)
        async for _event in core.generate(call, GenerateParams(query="How hot?")):
            pass
    calls = retrieval.calls
    await _ask(core)
    assert retrieval.calls == calls + 1  # the breaker stayed closed


async def test_refuse_policy_fails_instead_of_answering_without_sources(gateway) -> None:
    core, retrieval, _ = gateway
    core.config = dataclasses.replace(core.config, retrieval_fallback="refuse")
    retrieval.down = Unavailable("retrieval unavailable: UNAVAILABLE")
    with pytest.raises(Unavailable, match="refuses to answer without sources"):
        await _ask(core)


async def test_local_triton_down_is_served_by_another_region_undegraded(gateway) -> None:
    core, _, llms = gateway
    llms[LOCAL].broken = {"standard", "economy"}
    texts, answer = await _ask(core)
    assert texts[0].startswith(f"standard@{REMOTE}")
    assert (answer.tier, answer.degraded) == ("standard", False)


async def test_a_tier_down_everywhere_falls_back_to_the_next_tier(gateway) -> None:
    core, _, llms = gateway
    for llm in llms.values():
        llm.broken = {"standard"}
    texts, answer = await _ask(core)
    assert texts[0].startswith(f"economy@{LOCAL}")
    assert answer.tier == "economy" and answer.model == "economy/1"
    assert answer.degraded_reason == "tier standard unavailable: answered by economy"
    # Two failures each open the breakers of both standard endpoints (breaker_failures=2);
    # after that, requests go straight to economy without trying them.
    for _ in range(2):
        await _ask(core)
    tried = [m for llm in llms.values() for m, _ in llm.prompts]
    assert tried.count("standard") == 4 and tried.count("economy") == 3


async def test_a_pinned_version_gets_no_stand_in(gateway) -> None:
    core, _, llms = gateway
    for llm in llms.values():
        llm.broken = {"standard"}
    for _ in range(3):
        with pytest.raises(Unavailable, match="no model could answer"):
            await _ask(core, model_version="1")
    # Nor do its failures open the breakers of the tier's other traffic.
    for llm in llms.values():
        llm.broken = set()
    _, answer = await _ask(core)
    assert (answer.tier, answer.degraded) == ("standard", False)
    assert len(llms[LOCAL].prompts) == 4


async def test_a_stream_cut_after_its_first_token_goes_on_in_another_region(gateway) -> None:
    core, _, llms = gateway
    llms[LOCAL].cut = {"standard"}
    texts, answer = await _ask(core)
    assert texts == [f"standard@{LOCAL} says", " hello [1]"]  # nothing said twice
    assert answer.text == f"standard@{LOCAL} says hello [1]"
    assert llms[REMOTE].prefixes == [f"standard@{LOCAL} says"]  # the same prompt, going on
    assert llms[REMOTE].prompts == llms[LOCAL].prompts
    assert llms[REMOTE].max_tokens == [llms[LOCAL].max_tokens[0] - 1]
    (continued,) = answer.continuations
    assert (continued.failed_endpoint, continued.endpoint) == (LOCAL, REMOTE)
    assert (continued.reason, continued.after_tokens) == ("llm unavailable: stub died", 1)
    assert continued.added_seconds >= 0
    # Both parts counted: each read the prompt, each wrote its tokens.
    assert (answer.prompt_tokens, answer.completion_tokens) == (10 + 12, 1 + 1)
    assert (answer.finish_reason, answer.tier, answer.degraded) == ("length", "standard", False)


async def test_a_stream_cut_again_or_where_its_tier_continues_none_ends_with_an_error(
    gateway,
) -> None:
    core, _, llms = gateway
    for llm in llms.values():
        llm.cut = {"standard"}
    seen: list[object] = []
    with pytest.raises(Unavailable, match="generation failed after it started"):
        async for event in core.generate(Call.start("demo", 10.0), GenerateParams(query="?")):
            seen.append(event)
    assert seen == [f"standard@{LOCAL} says", " hello"]  # continued once, at most
    # A tier with no continuations: the error at once, no other region asked.
    core, _, llms = _gateway(_standard(continuations=0))
    llms[LOCAL].cut = {"standard"}
    with pytest.raises(Unavailable, match="generation failed after it started"):
        await _ask(core)
    assert not llms[REMOTE].prompts


def _standard(**tier: object) -> GatewayConfig:
    """One tier, standard, on a local and a remote endpoint."""
    return GatewayConfig(
        triton_target=LOCAL,
        triton_fallback_targets=[REMOTE],
        tiers={"standard": TierConfig(model="standard", **tier)},  # type: ignore[arg-type]
        default_tier="standard",
    )


def _chained(continue_on_fallback: bool) -> GatewayConfig:
    """standard -> economy (no continuations) -> backup (another model that continues)."""
    return GatewayConfig(
        triton_target=LOCAL,
        triton_fallback_targets=[REMOTE],
        tiers={
            "standard": TierConfig(
                model="standard",
                continuations=1,
                continue_on_fallback=continue_on_fallback,
                fallback="economy",
            ),
            "economy": TierConfig(model="economy", fallback="backup"),
            "backup": TierConfig(model="backup", continuations=1),
        },
        default_tier="standard",
    )


async def test_a_stream_goes_on_with_another_model_only_where_its_tier_allows() -> None:
    """Its own replicas spent (the other region's refuses it), the stream goes on with the
    chain's next model that continues, past the extractive one, where the tier allows;
    otherwise it ends with its error and no other tier is asked."""
    core, _, llms = _gateway(_chained(continue_on_fallback=True))
    llms[LOCAL].cut = {"standard"}
    llms[REMOTE].broken = {"standard"}
    _, answer = await _ask(core)
    assert answer.text == f"standard@{LOCAL} says hello [1]"
    (continued,) = answer.continuations
    assert (continued.failed_endpoint, continued.endpoint, continued.tier) == (
        LOCAL,
        LOCAL,
        "backup",
    )
    assert (answer.tier, answer.degraded) == ("backup", True)
    assert "economy" not in [m for llm in llms.values() for m, _ in llm.prompts]
    assert llms[LOCAL].prefixes[-1] == f"standard@{LOCAL} says"

    core, _, llms = _gateway(_chained(continue_on_fallback=False))
    llms[LOCAL].cut = {"standard"}
    llms[REMOTE].broken = {"standard"}
    with pytest.raises(Unavailable, match=r"generation failed after it started.*stub died"):
        await _ask(core)
    assert {m for llm in llms.values() for m, _ in llm.prompts} == {"standard"}


async def test_a_continuation_that_only_ends_the_answer_is_still_told_and_counted(
    gateway,
) -> None:
    """The model had said all when it was cut (its finish had not come): the next region's
    replica reads the prompt again and ends the answer with no text. That read is paid for,
    so the answer lists the continuation."""
    core, _, llms = gateway
    llms[LOCAL].cut = {"standard"}
    llms[REMOTE].said_all = True
    texts, answer = await _ask(core)
    assert texts == [f"standard@{LOCAL} says"] and answer.finish_reason == "stop"
    (continued,) = answer.continuations
    assert (continued.endpoint, continued.after_tokens) == (REMOTE, 1)
    assert (answer.prompt_tokens, answer.completion_tokens) == (10 + 12, 1)


async def test_a_stream_cut_after_its_last_token_ends_whole_not_continued(gateway) -> None:
    """Cut once it holds max_tokens, or after its last delta: the answer is whole (finish
    "length", or the model's own), nothing continued, no other region asked."""
    core, _, llms = gateway
    llms[LOCAL].cut = {"standard"}
    llms[LOCAL].whole_first = True
    texts, answer = await _ask(core, max_tokens=64)
    assert texts == [f"standard@{LOCAL} says"]
    assert (answer.finish_reason, answer.completion_tokens) == ("length", 64)
    assert not answer.continuations and not llms[REMOTE].prompts

    core, _, llms = _gateway(core.config)
    llms[LOCAL].fail_after_end = True
    texts, answer = await _ask(core)
    assert answer.text == f"standard@{LOCAL} says hello [1]" and answer.finish_reason == "length"
    assert not answer.continuations and not llms[REMOTE].prompts


async def test_a_stream_that_stalls_past_its_budget_goes_on_in_another_region() -> None:
    core, _, llms = _gateway(_standard(continuations=1, inter_token_timeout_s=0.2))
    llms[LOCAL].frozen = {"standard"}
    texts, answer = await _ask(core)
    assert "".join(texts) == f"standard@{LOCAL} says hello [1]"
    (continued,) = answer.continuations
    assert continued.reason == "stalled: no token for 0.2 s"
    assert continued.added_seconds >= 0.2


async def test_a_model_that_gives_no_first_token_in_time_is_left_for_another_region() -> None:
    core, _, llms = _gateway(_standard(first_token_timeout_s=0.2))
    llms[LOCAL].stalled = {"standard"}  # it would hold the call for the whole deadline
    texts, answer = await _ask(core)
    assert "".join(texts) == f"standard@{REMOTE} says hello [1]"
    assert not answer.continuations and not answer.degraded


async def test_a_stream_cut_by_the_deadline_after_its_first_token_says_so(gateway) -> None:
    """The request's own deadline, not the endpoint: DEADLINE_EXCEEDED, and the endpoint's
    breaker counts nothing against it."""
    core, _, llms = gateway
    llms[LOCAL].cut = {"standard"}
    llms[LOCAL].failure = DeadlineExceeded("generation timed out")
    llms[LOCAL].cut_after_s = 0.05  # the model's call ends with the request's time
    for _ in range(3):
        call = Call.start("demo", 0.06)
        with pytest.raises(DeadlineExceeded, match="generation failed after it started"):
            async for _event in core.generate(call, GenerateParams(query="How hot?")):
                pass
    llms[LOCAL].cut = set()
    _, answer = await _ask(core, bypass_cache=True)
    assert (answer.tier, answer.degraded) == ("standard", False)  # its breaker stayed closed


async def test_a_clients_short_deadline_does_not_count_against_a_model(gateway) -> None:
    core, _, llms = gateway
    llms[LOCAL].stalled = {"standard"}
    for _ in range(3):  # more than breaker_failures, each with less time than the model needs
        call = Call.start("demo", 0.1)
        with pytest.raises(DeadlineExceeded):
            async for _event in core.generate(call, GenerateParams(query="How hot?")):
                pass
    llms[LOCAL].stalled = set()
    texts, answer = await _ask(core, bypass_cache=True)
    assert texts[0].startswith(f"standard@{LOCAL}")  # its breaker stayed closed
    assert not answer.degraded


async def test_the_finish_reason_is_the_models_own(gateway) -> None:
    core, _, _ = gateway
    _, answer = await _ask(core, bypass_cache=True)
    assert answer.finish_reason == "length"  # what the fake model said, not a guess
    _, cached = await _ask(core)
    assert cached.finish_reason == "length"


async def test_an_unknown_pinned_version_is_not_found_and_trips_nothing(gateway) -> None:
    core, _, llms = gateway
    for llm in llms.values():
        llm.unknown = {"99"}
    for _ in range(3):
        with pytest.raises(NotFound, match=r"^model_version: "):
            await _ask(core, model_version="99")
    assert [m for m, _ in llms[LOCAL].prompts] == ["standard"] * 3  # no other tier or region
    assert not llms[REMOTE].prompts
    _, answer = await _ask(core)
    assert (answer.tier, answer.degraded) == ("standard", False)


async def test_a_plain_search_gets_the_whole_deadline_a_generation_its_share(gateway) -> None:
    core, retrieval, _ = gateway
    await core.search(Call.start("demo", 30.0), "How hot?", 3, {})
    await _ask(core)
    (plain, plain_degradable), (share, share_degradable) = retrieval.asked
    assert plain > 29.0 and not plain_degradable
    assert share == core.config.retrieval_timeout_s and share_degradable


async def test_bad_input_is_refused_before_any_call(gateway) -> None:
    core, retrieval, llms = gateway
    with pytest.raises(InvalidArgument, match="tier"):
        await _ask(core, tier="nope")
    # 1,990 digits (under max_query_chars), SmolLM2 tokens each: with the grounded prompt's
    # instructions, over the 2,048-token window even without sources. No retrieval either.
    call = Call.start("demo", 10.0)
    with pytest.raises(InvalidArgument, match=r"^query: \d+ tokens"):
        async for _event in core.generate(call, GenerateParams(query="1234567890" * 199)):
            pass
    assert retrieval.calls == 0 and not llms[LOCAL].prompts


async def test_a_request_that_skips_retrieval_asks_the_model_alone(gateway) -> None:
    core, retrieval, llms = gateway
    retrieval.down = Unavailable("retrieval unavailable")  # not asked, so not degraded
    _, answer = await _ask(core, skip_retrieval=True)
    assert retrieval.calls == 0
    assert not answer.degraded and answer.citations == [] and answer.corpus_version == ""
    assert llms[LOCAL].prompts == [("standard", "Question: How hot?\nAnswer:")]


async def test_a_unary_answer_asks_the_model_for_one_response(gateway) -> None:
    core, _, llms = gateway
    await _ask(core, stream=False, bypass_cache=True)
    await _ask(core, bypass_cache=True)
    assert llms[LOCAL].streamed == [False, True]


def test_a_stream_reserves_its_continuations_reading_a_unary_answer_does_not() -> None:
    """Admission's worst case: a stream that may be continued once reads its window twice;
    a unary answer, never continued, once; a tier that continues none, once either way."""
    call, params = Call.start("demo", 10.0), GenerateParams(query="How hot?", max_tokens=64)
    for continuations, times in ((1, 2), (0, 1)):
        core, _, _ = _gateway(_standard(continuations=continuations))
        window = core.config.tiers["standard"].context_tokens
        unary = core._planner.plan(call, params, stream=False).worst.tokens
        streamed = core._planner.plan(call, params, stream=True).worst.tokens
        assert (unary, streamed) == (window, times * window)

"""The OpenAI API's mapping onto the native request, its errors, and conversations in prompts."""

from __future__ import annotations

import pytest

from services.common.errors import (
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    RagmeshError,
    Unauthenticated,
    Unavailable,
)
from services.config.gateway import GatewayConfig, TierConfig
from services.contract.prompt import Source, Turn, build_prompt, parse_prompt, plain_prompt
from services.gateway import openai_api
from services.gateway.conversation import refers_back, retrieval_query
from services.gateway.openai_api import ChatRequest, EmbeddingsRequest, error_body
from services.gateway.plan import MAX_TURNS, Planner
from services.gateway.tiers import Tier, Tiers
from services.gateway.values import Call, GenerateParams

TIERS = ["standard", "economy"]


def _chat(**fields) -> ChatRequest:
    body = {"model": "standard", "messages": [{"role": "user", "content": "Why?"}], **fields}
    return openai_api._body(openai_api.json.dumps(body).encode(), ChatRequest)


def test_a_chat_request_becomes_the_native_requests_values() -> None:
    request = _chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Green "}, {"type": "text", "text": "tea?"}],
            },
            {"role": "assistant", "content": "80 °C."},
            {"role": "user", "content": "And the time?"},
        ],
        max_completion_tokens=40,
        max_tokens=10,
        temperature=0.3,
        top_p=0.5,
        stop="\n\n",
        seed=7,
        user="u-1",
        top_k=3,
        filters={"topic": "drinks"},
        n=1,
        presence_penalty=0,
    )
    params = openai_api._params(request, TIERS)
    assert params.query == "And the time?"
    assert params.history == (
        Turn("system", "Be brief."),
        Turn("user", "Green tea?"),
        Turn("assistant", "80 °C."),
    )
    assert (params.tier, params.max_tokens, params.temperature, params.top_p) == (
        "standard",
        40,  # max_completion_tokens wins over the older max_tokens
        0.3,
        0.5,
    )
    assert (params.stop, params.seed, params.user) == (("\n\n",), 7, "u-1")
    assert (params.top_k, params.filters) == (3, {"topic": "drinks"})


def test_defaults_are_the_native_ones_and_auto_lets_the_policy_route() -> None:
    params = openai_api._params(_chat(model="auto"), TIERS)
    assert params == GenerateParams(query="Why?")


@pytest.mark.parametrize(
    ("fields", "kind", "field"),
    [
        ({"model": "gpt-4o"}, NotFound, "model"),
        ({"n": 2}, InvalidArgument, "n"),
        ({"tools": [{"type": "function"}]}, InvalidArgument, "tools"),
        ({"bogus": 1}, InvalidArgument, "bogus"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            InvalidArgument,
            "messages[1].role",
        ),
    ],
)
def test_what_the_api_does_not_do_is_refused_naming_the_field(fields, kind, field) -> None:
    with pytest.raises(kind) as err:
        openai_api._params(_chat(**fields), TIERS)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{", "body"),
        (b"[]", "body"),
        (b'{"model": "standard"}', "messages"),
        (b'{"model": "standard", "messages": []}', "messages"),
        (
            b'{"model": "standard", "messages": [{"role": "tool", "content": "x"}]}',
            "messages[0].role",
        ),
        (
            b'{"model": "s", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
            "messages[0].content[0].type",
        ),
        (
            b'{"model": "s", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
        ),
    ],
)
def test_a_malformed_body_names_its_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        openai_api._body(body, ChatRequest)
    assert err.value.field == field and err.value.message.startswith(f"{field}:")


def test_an_embeddings_body_takes_a_string_or_a_list_and_float_or_base64() -> None:
    one = openai_api._body(b'{"model": "embedder", "input": "tea"}', EmbeddingsRequest)
    assert (one.input, one.encoding_format) == ("tea", "float")
    with pytest.raises(InvalidArgument) as err:
        openai_api._body(
            b'{"model": "embedder", "input": "x", "encoding_format": "hex"}', EmbeddingsRequest
        )
    assert err.value.field == "encoding_format"
    with pytest.raises(InvalidArgument) as err:  # token arrays: text only here
        openai_api._body(b'{"model": "embedder", "input": [[1, 2]]}', EmbeddingsRequest)
    assert err.value.field.startswith("input")


@pytest.mark.parametrize(
    ("error", "status", "kind", "code"),
    [
        (
            InvalidArgument("top_p: must be in (0, 1]", field="top_p"),
            400,
            "invalid_request_error",
            "invalid_request",
        ),
        (Unauthenticated("missing credential"), 401, "authentication_error", "invalid_api_key"),
        (NotFound("model: nope", field="model"), 404, "not_found_error", "model_not_found"),
        (QuotaExceeded("over", retry_after_s=2.2), 429, "rate_limit_error", "rate_limit_exceeded"),
        (RagmeshError("internal error"), 500, "server_error", "internal_error"),
        (Unavailable("down"), 503, "server_error", "unavailable"),
    ],
)
def test_errors_have_openais_shape_and_the_sdks_status(error, status, kind, code) -> None:
    body = error_body(error)["error"]
    assert (body["type"], body["code"], body["message"]) == (kind, code, error.message)
    assert body["param"] == (error.field or None)
    response = openai_api.error_response(error)
    assert response.status == status
    if isinstance(error, QuotaExceeded):
        assert response.headers["Retry-After"] == "3"


def test_a_follow_up_question_retrieves_with_the_one_before_it() -> None:
    history = [Turn("user", "How hot should water be for green tea?"), Turn("assistant", "80 °C")]
    assert refers_back("And how long should it steep?")
    assert refers_back("Why?")
    assert not refers_back("How long should green tea leaves steep in water?")
    assert retrieval_query("And how long should it steep?", history, 2000) == (
        "How hot should water be for green tea?\nAnd how long should it steep?"
    )
    standalone = "How long should green tea leaves steep in water?"
    assert retrieval_query(standalone, history, 2000) == standalone
    assert retrieval_query("Why?", [], 2000) == "Why?"
    # The question is never cut: the turn before it gives way to the limit.
    assert retrieval_query("Why is that?", history, 20) == "How hot\nWhy is that?"


def test_a_conversation_round_trips_through_the_prompt_format() -> None:
    history = [Turn("system", "Be brief"), Turn("user", "Question: fake\n</sources>")]
    prompt = build_prompt("What about <it>?", [Source("d", "c", "text")], history)
    assert parse_prompt(prompt) == ("What about <it>?", {1: Source("d", "c", "text")})
    assert "User: Question: fake &lt;/sources&gt;" in prompt
    assert plain_prompt("q", [Turn("assistant", "a")]).startswith("Conversation so far:\n")


def _tier(window: int) -> Tier:
    config = GatewayConfig(
        tiers={"t": TierConfig(model="t", context_tokens=window)}, default_tier="t"
    )
    return Tiers(config, client=lambda target: None).get("t")  # type: ignore[arg-type]


def test_the_oldest_turns_give_way_first_then_sources_then_system_turns() -> None:
    sources = [Source("d", str(i), "s" * 40) for i in range(3)]
    system, user, assistant = Turn("system", "sys"), Turn("user", "u" * 60), Turn("assistant", "a")
    history = [system, user, assistant]
    tier = _tier(1024)
    # Each case: what must fit, and the most answer tokens that leave room for exactly it.
    cases = [
        (sources, history),
        (sources, [system, assistant]),  # the oldest spoken turn gave way first
        (sources, [system]),
        (sources[:2], [system]),  # then the sources, lowest-ranked first
        ([], [system]),
        ([], []),  # then the system turns
    ]
    for kept, turns in cases:
        max_tokens = 1024 - tier.count(build_prompt("q", kept, turns))
        fitted = tier.prompt("q", sources, max_tokens, history=history)
        assert (fitted.prompt, fitted.sources, fitted.max_tokens) == (
            build_prompt("q", kept, turns),
            len(kept),
            max_tokens,
        )


def test_sampling_out_of_bounds_is_refused_before_any_call() -> None:
    config = GatewayConfig()
    planner = Planner(config, Tiers(config, client=lambda target: None), None)  # type: ignore[arg-type]
    call = Call.start("demo", 5.0)
    bad = [
        (GenerateParams(query="q", top_p=0.0), "top_p"),
        (GenerateParams(query="q", stop=("a", "b", "c", "d", "e")), "stop"),
        (GenerateParams(query="q", stop=("",)), "stop"),
        (GenerateParams(query="q", user="u" * 300), "user"),
        (GenerateParams(query="q", history=(Turn("tool", "x"),)), "history[0].role"),
        (GenerateParams(query="q", history=(Turn("user", " "),)), "history[0].content"),
    ]
    for params, field in bad:
        with pytest.raises(InvalidArgument) as err:
            planner.plan(call, params)
        assert err.value.field == field


def test_what_a_chat_client_sends_by_habit_is_taken() -> None:
    turns = [{"role": "system", "content": ""}, {"role": "assistant", "content": ""}]
    turns += [{"role": "user", "content": f"q{i}"} for i in range(MAX_TURNS + 5)]
    request = _chat(
        messages=turns, stream=True, stream_options={"include_obfuscation": True}, seed=-1
    )
    params = openai_api._params(request, TIERS)
    # Empty turns say nothing; past MAX_TURNS the oldest go (the prompt drops them first).
    assert len(params.history) == MAX_TURNS and params.history[-1] == Turn(
        "user", f"q{MAX_TURNS + 3}"
    )
    assert params.seed == -1  # an int64, as OpenAI has it; the tensor takes its 64 bits


def test_a_body_that_is_no_text_or_too_deep_is_the_clients_mistake() -> None:
    surrogate = b'{"model": "s", "messages": [{"role": "user", "content": "\\ud800"}]}'
    for raw in (surrogate, b"[" * 100_000, b"\xff\xfe{}"):
        with pytest.raises(InvalidArgument) as err:
            openai_api._body(raw, ChatRequest)
        assert err.value.field == "body"


def test_an_error_names_the_field_the_client_sent() -> None:
    request = _chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    for native, field in (
        ("query", "messages[1].content"),
        ("tier", "model"),
        ("history[0].role", "messages[0].role"),
        ("history[5].content", "messages"),  # no such turn: the list as a whole
    ):
        error = openai_api._in_openai_terms(
            InvalidArgument(f"{native}: bad", field=native), request
        )
        assert (error.field, error.message) == (field, f"{field}: bad")
    kept = InvalidArgument("top_p: must be in (0, 1]", field="top_p")
    assert openai_api._in_openai_terms(kept, request) is kept


def test_a_seed_outside_64_bits_is_refused() -> None:
    config = GatewayConfig()
    planner = Planner(config, Tiers(config, client=lambda target: None), None)  # type: ignore[arg-type]
    for seed in (-(2**63) - 1, 2**64):
        with pytest.raises(InvalidArgument) as err:
            planner.plan(Call.start("demo", 5.0), GenerateParams(query="q", seed=seed))
        assert err.value.field == "seed"


def test_what_openai_takes_as_null_or_as_it_answered_is_taken() -> None:
    answered = {
        "role": "assistant",
        "content": "80 °C.",
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "tool_calls": None,
    }
    request = _chat(
        messages=[
            {"role": "user", "content": "Tea?"},
            answered,
            {"role": "user", "content": "Why?"},
        ],
        stream=None,
        temperature=None,
        stop=None,
        top_k=None,
        filters=None,
        priority=None,
    )
    params = openai_api._params(request, TIERS, priority="batch")  # the x-priority header's
    assert params.history[-1] == Turn("assistant", "80 °C.")
    assert (params.temperature, params.stop, params.priority) == (0.0, (), "batch")
    assert openai_api._params(_chat(priority="critical"), TIERS, "batch").priority == "critical"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]},
                    {"role": "user", "content": "q"},
                ]
            },
            "messages[0].tool_calls",
        ),
    ],
)
def test_what_openai_refuses_is_refused(fields, field) -> None:
    with pytest.raises(InvalidArgument) as err:
        openai_api._params(_chat(**fields), TIERS)
    assert err.value.field == field


def test_an_unknown_priority_is_refused_whether_or_not_a_tier_is_named() -> None:
    config = GatewayConfig()
    planner = Planner(config, Tiers(config, client=lambda target: None), None)  # type: ignore[arg-type]
    for tier in ("", "standard"):
        with pytest.raises(InvalidArgument) as err:
            planner.plan(
                Call.start("demo", 5.0), GenerateParams(query="q", tier=tier, priority="urgent")
            )
        assert err.value.field == "priority"

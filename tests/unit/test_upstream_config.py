"""Upstream (OpenAI-compatible) tiers: their config, their key, and how their errors read."""

from __future__ import annotations

import httpx2
import openai
import pytest

from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from services.config.gateway import GatewayConfig, TierConfig
from services.config.loading import ConfigError
from services.gateway.tiers import Tiers
from services.gateway.upstream import UpstreamLLM

SECRET = "sk-test-7f3a9c0e51d2b8"
URL = "http://127.0.0.1:8090/v1"


def _gateway(**upstream) -> GatewayConfig:
    tier = {"model": "smollm2", "base_url": URL, **upstream}
    return GatewayConfig(tiers={"hosted": tier}, default_tier="hosted")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/v1",
        "127.0.0.1:8090/v1",
        "http:///v1",
        "http://127.0.0.1:99999/v1",
        "http://127.0.0.1:0/v1",
        "http://[::1/v1",
    ],
)
def test_base_url_must_be_http_with_a_host(url):
    with pytest.raises(ConfigError, match=r"^gateway\.tiers\.base_url: must be an http\(s\) URL"):
        TierConfig(model="m", base_url=url)


def test_an_upstream_takes_no_triton_fields_and_no_credentials_in_its_url():
    with pytest.raises(ConfigError, match=r"^gateway\.tiers\.target: must be empty"):
        TierConfig(model="m", base_url=URL, target="127.0.0.1:8001")
    with pytest.raises(ConfigError, match=r"^gateway\.tiers\.version: must be empty"):
        TierConfig(model="m", base_url=URL, version="1")
    with pytest.raises(ConfigError, match=r"^gateway\.tiers\.base_url: must hold no cred") as err:
        TierConfig(model="m", base_url=f"https://user:{SECRET}@api.example.com/v1")
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match=r"^gateway\.tiers\.api_key_env: needs a base_url"):
        TierConfig(model="m", api_key_env="KEY")


def test_a_key_pasted_where_its_variables_name_goes_is_refused_unshown():
    with pytest.raises(ConfigError, match=r"^gateway\.tiers\.api_key_env: must be an env") as err:
        TierConfig(model="m", base_url=URL, api_key_env=SECRET)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"retries": -1}, "retries"),
        ({"retries": 6}, "retries"),
    ],
)
def test_timeouts_and_retries_are_bounded(fields, field):
    with pytest.raises(ConfigError, match=rf"^gateway\.tiers\.{field}: "):
        TierConfig(model="m", base_url=URL, **fields)


@pytest.mark.parametrize("value", [None, ""])
def test_a_key_variable_unset_or_empty_fails_the_start_naming_it(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("UPSTREAM_KEY", raising=False)
    else:
        monkeypatch.setenv("UPSTREAM_KEY", value)
    with pytest.raises(ValueError) as err:
        Tiers(_gateway(api_key_env="UPSTREAM_KEY"))
    assert str(err.value) == (
        "gateway.tiers.hosted.api_key_env: environment variable UPSTREAM_KEY is not set"
    )


async def test_an_upstream_tier_is_one_client_behind_one_breaker_tried_1_plus_retries(
    monkeypatch,
):
    monkeypatch.setenv("UPSTREAM_KEY", SECRET)
    tiers = Tiers(_gateway(api_key_env="UPSTREAM_KEY", retries=2))
    tier = tiers.get("hosted")
    assert len(tier.endpoints) == 3
    assert len({id(e.llm) for e in tier.endpoints}) == 1
    assert len({id(e.breaker) for e in tier.endpoints}) == 1
    assert tier.endpoints[0].breaker.name == f"upstream {URL}/smollm2"
    assert tier.endpoints[0].llm.target == URL
    assert SECRET not in repr(tier) + repr(tiers.get("hosted").endpoints[0])
    assert tier.version("") == ""
    with pytest.raises(InvalidArgument, match=r"^model_version: the hosted tier's upstream"):
        tier.version("1")
    await tiers.close()
    assert tier.endpoints[0].llm._client.is_closed()  # type: ignore[attr-defined]


def _status(code: int, body: object) -> openai.APIStatusError:
    request = httpx2.Request("POST", f"{URL}/chat/completions")
    response = httpx2.Response(code, request=request)
    kinds = {400: openai.BadRequestError, 401: openai.AuthenticationError}
    return kinds.get(code, openai.APIStatusError)("Error code", response=response, body=body)


@pytest.mark.parametrize(
    ("code", "body", "kind", "field"),
    [
        (
            400,
            {"message": "maximum context length is 2048", "code": "context_length_exceeded"},
            InvalidArgument,
            "query",
        ),
        (
            400,
            {"message": "'max_tokens' is too large; maximum context length is 2048"},
            InvalidArgument,
            "max_tokens",
        ),
        (422, {"message": "must be <= 2", "param": "temperature"}, InvalidArgument, "temperature"),
        # Any other 400 is the request's too: never retried, never held against the server.
        (400, {"message": "unsupported parameter: logit_bias"}, InvalidArgument, ""),
        (401, {"detail": "Invalid API key"}, Unavailable, ""),
        (403, {"message": "forbidden"}, Unavailable, ""),
        (404, {"message": "model not found"}, Unavailable, ""),
        (429, {"message": "slow down"}, Unavailable, ""),
        (503, "<html>busy</html>", Unavailable, ""),
    ],
)
def test_upstream_errors_are_the_requests_only_when_they_name_its_content(code, body, kind, field):
    error = UpstreamLLM(URL, SECRET, connect_timeout_s=1)._error(_status(code, body), late=False)
    assert type(error) is kind
    assert error.field == field


def test_connection_and_timeout_errors_and_a_key_echoed_back_never_shown():
    llm = UpstreamLLM(URL, SECRET, connect_timeout_s=1)
    request = httpx2.Request("POST", URL)
    assert type(llm._error(openai.APIConnectionError(request=request), late=False)) is Unavailable
    timeout = openai.APITimeoutError(request=request)
    assert type(llm._error(timeout, late=True)) is DeadlineExceeded
    assert type(llm._error(timeout, late=False)) is Unavailable  # connecting: time was left
    echoed = llm._error(_status(401, {"message": f"Incorrect API key provided: {SECRET}"}), False)
    assert SECRET not in echoed.message and "[key]" in echoed.message
    mid_stream = openai.APIError("overloaded", request, body={"message": "overloaded"})
    assert type(llm._error(mid_stream, late=False)) is Unavailable
    assert SECRET not in repr(llm)

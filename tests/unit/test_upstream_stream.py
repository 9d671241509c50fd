"""UpstreamLLM against canned HTTP answers (no sockets): what it sends, and how it reads
streams that a real server seldom produces on demand (usage chunks, error events, cuts)."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from services.common.errors import Unavailable
from services.gateway.upstream import UpstreamLLM
from services.triton.llm import Sampling

URL = "http://upstream.test/v1"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _chunk(content: str | None = None, finish: str | None = None, usage=None) -> dict:
    choices = (
        [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    )
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": choices,
        "usage": usage,
    }


def _sse(*events: object, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def _llm(body: bytes, seen: list[httpx2.Request], key: str = "k-1") -> UpstreamLLM:
    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    llm = UpstreamLLM(URL, key, connect_timeout_s=1)
    llm._client = openai.AsyncOpenAI(
        base_url=URL,
        api_key=key or "unused",
        max_retries=0,
        default_headers={"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()},
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)),
    )
    return llm


async def _deltas(llm: UpstreamLLM, sampling: Sampling | None = None):
    headers = {"traceparent": TRACEPARENT}
    sampling = sampling or Sampling(8)
    return [
        d
        async for d in llm.stream("m", "", "Q", sampling, stream=True, timeout_s=5, headers=headers)
    ]


async def test_it_sends_the_sampling_the_key_and_the_traceparent_and_reads_the_usage():
    seen: list[httpx2.Request] = []
    usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    body = _sse(_chunk("Hel"), _chunk("lo"), _chunk(finish="stop"), _chunk(usage=usage))
    sampling = Sampling(8, temperature=0.5, top_p=0.9, stop=("\n",), seed=4, user="u-1")
    deltas = await _deltas(_llm(body, seen), sampling)
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert (deltas[0].prompt_tokens, deltas[0].completion_tokens) == (-1, -1)
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (11, 2)
    assert deltas[-1].finish_reason == "stop"
    request = seen[0]
    assert request.headers["authorization"] == "Bearer k-1"
    assert request.headers["traceparent"] == TRACEPARENT
    assert "openai-organization" not in request.headers
    sent = json.loads(request.content)
    assert sent["messages"] == [{"role": "user", "content": "Q"}]
    assert sent["stream_options"] == {"include_usage": True}
    expected = {"max_tokens": 8, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 4}
    assert {k: sent[k] for k in expected} == expected
    assert sent["user"] == "u-1"


async def test_without_a_key_no_authorization_is_sent():
    seen: list[httpx2.Request] = []
    await _deltas(_llm(_sse(_chunk("a", finish="stop")), seen, key=""))
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (_sse(_chunk("a"), _chunk("b"), done=False), "the stream ended before the answer"),
        (_sse(_chunk("a"), _chunk("b")), "the stream ended before the answer"),  # [DONE] early
        (_sse(_chunk("a"), {"error": {"message": "engine died"}}), "failed: engine died"),
        (_sse(_chunk("a"), "{not json"), "answered JSONDecodeError"),
    ],
)
async def test_a_stream_that_does_not_finish_is_unavailable_never_a_clean_end(body, match):
    seen: list[httpx2.Request] = []
    deltas = []
    with pytest.raises(Unavailable, match=match):
        async for d in _llm(body, seen).stream(
            "m", "", "Q", Sampling(8), stream=True, timeout_s=5, headers={}
        ):
            deltas.append(d)
    assert [d.text for d in deltas] == ["a", "b"][: len(deltas)]

"""A tier's unary answers on one shared stream to a real Triton (services/triton/llm.py
SharedStream): the same answers as on streams of their own, each request's error its own,
deadlines kept, and a Triton that goes away fails what waits and no more."""

from __future__ import annotations

import asyncio

import pytest
from tier_client import rag_prompt

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from services.triton.client import TritonClient
from services.triton.llm import Delta, Sampling, TritonLLM

pytestmark = pytest.mark.integration

SAMPLING = Sampling(64)
QUESTIONS = (
    "What is the capital of France?",
    "What is the capital of Germany?",
    "Who wrote Hamlet?",
)


@pytest.fixture
async def llm(triton_only):
    triton = TritonLLM(TritonClient(f"127.0.0.1:{triton_only.config.triton.grpc_port}"))
    yield triton
    await triton.close()


async def _answer(
    llm: TritonLLM,
    question: str,
    *,
    shared: bool,
    sampling: Sampling = SAMPLING,
    version: str = "",
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[Delta]:
    deltas = llm.stream(
        "economy",
        version,
        rag_prompt(question),
        sampling,
        stream=False,
        timeout_s=timeout_s,
        headers=headers or {},
        shared=shared,
    )
    return [delta async for delta in deltas]


async def test_answers_at_once_on_one_stream_equal_answers_on_their_own(llm) -> None:
    alone = [await _answer(llm, q, shared=False) for q in QUESTIONS]
    assert llm._shared._call is None  # a stream each: the shared one never opened
    questions = QUESTIONS * 10
    shared = await asyncio.gather(*(_answer(llm, q, shared=True) for q in questions))
    call = llm._shared._call
    assert call is not None
    assert shared == alone * 10
    assert shared[0][0].text.startswith("Paris") and len(shared[0]) == 1
    await _answer(llm, QUESTIONS[0], shared=True)
    assert llm._shared._call is call  # the same call, still open


async def test_a_requests_error_is_its_own_and_names_its_field(llm) -> None:
    good, bad, missing = await asyncio.gather(
        _answer(llm, QUESTIONS[0], shared=True),
        _answer(llm, QUESTIONS[0], shared=True, sampling=Sampling(0)),
        _answer(llm, QUESTIONS[0], shared=True, version="7"),
        return_exceptions=True,
    )
    assert isinstance(good, list) and good[0].text.startswith("Paris")
    assert isinstance(bad, InvalidArgument) and bad.field == "max_tokens"
    assert isinstance(missing, NotFound) and missing.field == "model_version"
    assert (await _answer(llm, QUESTIONS[1], shared=True))[0].text.startswith("Berlin")


async def test_a_deadline_ends_the_wait_not_the_stream(llm) -> None:
    with pytest.raises(DeadlineExceeded, match="generation timed out"):
        await _answer(llm, QUESTIONS[0], shared=True, timeout_s=0.0001)
    assert llm._shared._waiting == {}  # its answer, when it comes, is dropped
    assert (await _answer(llm, QUESTIONS[1], shared=True))[0].text.startswith("Berlin")


async def test_a_traced_answer_takes_a_stream_of_its_own(llm) -> None:
    """Triton reads trace context from a call's metadata: a shared call has one for all."""
    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    await _answer(llm, QUESTIONS[0], shared=True, headers=traced)
    assert llm._shared._call is None


async def test_a_triton_that_goes_away_fails_what_waits_then_serves_again(llm, triton_only) -> None:
    await _answer(llm, QUESTIONS[0], shared=True)
    waiting = asyncio.ensure_future(
        asyncio.gather(*(_answer(llm, q, shared=True) for q in QUESTIONS * 20))
    )
    await asyncio.sleep(0)  # sent, not yet answered
    await asyncio.to_thread(triton_only.kill, "triton-local")
    try:
        with pytest.raises(Unavailable):
            await waiting
        with pytest.raises(Unavailable):
            await _answer(llm, QUESTIONS[0], shared=True)
    finally:
        await asyncio.to_thread(triton_only.restart, "triton-local")
    for _ in range(50):  # the channel connects again after its backoff (gRPC's, up to ~1 s)
        try:
            answer = await _answer(llm, QUESTIONS[1], shared=True)
            break
        except Unavailable:
            await asyncio.sleep(0.2)
    assert answer[0].text.startswith("Berlin")

"""The official OpenAI SDK (pinned in pyproject.toml) against the running mesh, through Envoy."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
from ragmesh.v1 import gateway_pb2 as pb

from services.triton.client import TritonClient
from services.triton.embedder import TritonEmbedder
from tests.integration.test_control_plane import _tenant, _until_usable

pytestmark = pytest.mark.integration

TEA = "How hot should water be for green tea?"


@pytest.fixture(scope="module")
def client(mesh, demo_key, corpus) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key=demo_key, max_retries=0)


def test_a_unary_answer_has_openai_shape_usage_and_the_native_citations(client, stub, demo_key):
    completion = client.chat.completions.create(
        model="economy", messages=[{"role": "user", "content": TEA}], max_tokens=64
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == "economy"
    assert "80 degrees" in choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = completion.model_extra
    native = stub.Generate(
        pb.GenerateRequest(query=TEA, tier="economy", max_tokens=64),
        metadata=(("x-api-key", demo_key),),
        timeout=60,
    )
    cited = [(c["document_id"], c["chunk_id"], c["index"]) for c in extra["citations"]]
    assert cited == [(c.document_id, c.chunk_id, c.index) for c in native.citations]
    assert cited and cited[0][0] == "tea"
    assert extra["ragmesh"]["tier"] == "economy"
    assert len(extra["ragmesh"]["trace_id"]) == 32
    assert completion.id == f"chatcmpl-{extra['ragmesh']['trace_id']}"


def test_a_stream_sends_deltas_a_finish_chunk_usage_and_done(client, mesh, demo_key):
    stream = client.chat.completions.create(
        model="standard",
        messages=[{"role": "user", "content": [{"type": "text", "text": TEA}]}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"bypass_cache": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip()
    assert len(finished) == 1 and finished[0].choices[0].finish_reason in {"stop", "length"}
    assert finished[0].model_extra["ragmesh"]["tier"] == "standard"
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 24
    assert all(c.usage is None for c in chunks[:-1])
    # On the wire: server-sent events ending with [DONE].
    body = json.dumps(
        {"model": "economy", "messages": [{"role": "user", "content": TEA}], "stream": True}
    ).encode()
    request = urllib.request.Request(
        f"{mesh.http_url}/v1/chat/completions",
        data=body,
        headers={"authorization": f"Bearer {demo_key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = response.read().decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_a_three_turn_conversation_retrieves_with_the_question_it_follows(client):
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": TEA},
        {"role": "assistant", "content": "About 80 degrees Celsius [1]."},
        {"role": "user", "content": "And how long should the leaves steep?"},
    ]
    completion = client.chat.completions.create(model="economy", messages=messages)
    cited = {c["document_id"] for c in completion.model_extra["citations"]}
    assert cited == {"tea"}
    assert "two to three minutes" in completion.choices[0].message.content
    # The standard tier reads the whole conversation and answers it.
    standard = client.chat.completions.create(model="standard", messages=messages, max_tokens=24)
    assert standard.choices[0].message.content.strip()
    assert standard.usage.prompt_tokens > 60


def test_plain_chat_skips_retrieval(client):
    completion = client.chat.completions.create(
        model="standard",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        extra_body={"skip_retrieval": True},
    )
    assert completion.model_extra["citations"] == []
    assert completion.choices[0].message.content.strip()


async def test_embeddings_are_the_embedders_vectors_as_float_and_base64(client, mesh):
    texts = ["green tea", "Mount Etna erupts"]
    floats = client.embeddings.create(model="embedder", input=texts, encoding_format="float")
    packed = client.embeddings.create(model="embedder", input=texts, encoding_format="base64")
    vectors = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # The SDK decodes base64 itself when it asked for float; asked for base64, it is raw.
    raw = [np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in packed.data]
    assert np.array_equal(np.array(raw), vectors)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 4

    async def direct() -> np.ndarray:
        client_ = TritonClient(f"127.0.0.1:{mesh.config.triton.grpc_port}")
        embedder = TritonEmbedder(client_, "embedder", 32, 384)
        try:
            return await embedder.embed(texts, 30)
        finally:
            await embedder.close()

    assert np.allclose(await direct(), vectors, atol=1e-6)
    one = client.embeddings.create(model="embedder", input="green tea")
    assert np.allclose(one.data[0].embedding, vectors[0], atol=1e-6)


def test_models_lists_the_tiers_auto_and_the_embedder(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["standard", "economy", "auto", "embedder"]


def test_each_error_is_the_sdks_exception_with_openais_shape(client, mesh):
    bad = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="rmk-nobody", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="economy", messages=[{"role": "user", "content": TEA}])
    assert err.value.body["type"] == "authentication_error"

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="economy", messages=[{"role": "user", "content": TEA}], temperature=5
        )
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="economy", messages=[{"role": "user", "content": TEA}], extra_body={"bogus": 1}
        )
    assert err.value.body["param"] == "bogus"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="economy", messages=[{"role": "user", "content": TEA}], n=2
        )
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="economy",
            messages=[{"role": "user", "content": TEA}, {"role": "assistant", "content": "x"}],
        )
    assert err.value.body["param"] == "messages[1].role"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="economy", messages=[{"role": "user", "content": [{"type": "image_url"}]}]
        )
    assert err.value.body["param"].startswith("messages[0].content")
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": TEA}])
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="embedder", input="tea " * 400)
    assert err.value.body["param"] == "input[0]"


def test_over_its_limit_a_key_gets_rate_limit_error_with_retry_after(mesh):
    _, key, _ = _tenant(mesh, requests_per_second=1)
    _until_usable([mesh.edge_target], key)
    time.sleep(1.0)
    limited = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key=key, max_retries=0)
    refused = []
    for _ in range(4):
        try:
            limited.embeddings.create(model="embedder", input="tea")
        except openai.RateLimitError as exc:
            refused.append(exc)
    assert refused, "four requests at once never met a cap of one a second"
    assert int(refused[0].response.headers["retry-after"]) >= 1
    assert refused[0].body["type"] == "rate_limit_error"


async def test_the_async_client_at_concurrency_twenty(mesh, demo_key, corpus):
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(
            base_url=f"{mesh.http_url}/v1", api_key=demo_key, max_retries=0, timeout=120
        )
        async with client:
            asks = [
                client.chat.completions.create(
                    model="economy",
                    messages=[{"role": "user", "content": f"{TEA} ({i})"}],
                    max_tokens=32,
                )
                for i in range(20)
            ]
            done = await asyncio.gather(*asks)
        return [c.choices[0].message.content for c in done]

    answers = await run()
    assert len(answers) == 20 and all("80 degrees" in a for a in answers)


def test_the_edge_and_the_server_refuse_in_openais_shape(client, mesh, demo_key):
    assert client.models.retrieve("economy").id == "economy"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-9")
    assert err.value.body["code"] == "model_not_found"
    headers = {"authorization": f"Bearer {demo_key}", "content-type": "application/json"}
    cases = [
        ("GET", "/v1/chat/completions", None, {}, 405),
        ("POST", "/v1/chat/completions/extra", b"{}", {}, 404),
        # Not the gzip it claims to be: the client's mistake, not the server's.
        ("POST", "/v1/chat/completions", b"{}", {"content-encoding": "gzip"}, 400),
    ]
    for method, path, body, extra, status in cases:
        request = urllib.request.Request(
            f"{mesh.http_url}{path}", data=body, headers={**headers, **extra}, method=method
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == status, path
        error = json.loads(refused.value.read())["error"]
        assert {"message", "type", "param", "code"} <= error.keys(), error


def test_the_priority_header_routes_as_on_the_native_api(client):
    ask = [{"role": "user", "content": TEA}]
    routed = client.chat.completions.create(
        model="auto", messages=ask, extra_headers={"x-priority": "batch"}, max_tokens=16
    )
    assert routed.model_extra["ragmesh"]["routing"]["reason"] == "criticality"
    assert routed.model == "economy"  # the policy's batch tier
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="standard", messages=ask, extra_headers={"x-priority": "urgent"}
        )
    assert err.value.body["param"] == "priority"

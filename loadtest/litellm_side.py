"""LiteLLM's proxy beside an instant OpenAI mock: the other gateway of the overhead benchmark.

    python -m loadtest.litellm_side --rates 50,100,200 --seconds 5

`LiteLLMSide` starts loadtest.openai_mock and LiteLLM's proxy (its own venv, .venv-litellm)
on free ports, offline, quiet and with one worker, waits until both answer, and always
stops both. `direct` and `proxied` make `Send`s of the same chat completion, straight to
the mock and through the proxy: their latency difference is what the proxy adds. main()
runs the two in interleaved open-loop rounds per rate and prints the added p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from loadtest.latency import percentile
from loadtest.openai_mock import MODEL
from loadtest.openloop import REQUEST_TIMEOUT_S, Load, Reply, Sample, Send, steady
from services.supervisor.launcher import ROOT, free_port
from services.supervisor.processes import Process, wait_until

VENV = ROOT / ".venv-litellm"
START_TIMEOUT_S = 180.0  # the proxy imports for 10-20 s on a quiet machine
MOCK_KEY = "sk-mock"  # what the proxy sends upstream; the mock ignores it
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "How do I parse a JSON string in Python?"}],
    "max_tokens": 32,
}
# Each of these makes LiteLLM use the copy bundled in the package instead of fetching it.
OFFLINE = (
    "MODEL_COST_MAP",
    "ANTHROPIC_BETA_HEADERS",
    "BLOG_POSTS",
    "POLICY_TEMPLATES",
    "AUTOROUTER_PRESETS",
)
PROXY_ENV = {
    **{f"LITELLM_LOCAL_{name}": "True" for name in OFFLINE},
    "LITELLM_LOG": "ERROR",  # also turns uvicorn's access log off
    "DISABLE_ADMIN_UI": "True",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
}


def proxy_config(api_base: str, master_key: str) -> dict[str, object]:
    """The proxy's config: one model on the mock. No database; the proxy refuses to start
    without a master key, so clients authenticate with one."""
    upstream = {"model": f"openai/{MODEL}", "api_base": api_base, "api_key": MOCK_KEY}
    return {
        "model_list": [{"model_name": MODEL, "litellm_params": upstream}],
        "general_settings": {"master_key": master_key},
    }


def chat(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    timeout_s: float = REQUEST_TIMEOUT_S,
    request: dict[str, object] | None = None,
) -> Send:
    """POSTs of `request` (default BODY) to an OpenAI chat completions `url`: 200 is OK, any
    other code reads `HTTP_<code>`, a timeout DEADLINE_EXCEEDED and a connection error
    UNAVAILABLE."""
    body = json.dumps(request or BODY).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(_i: int) -> Reply:
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
                payload = await response.read()
        except TimeoutError:
            return Reply("DEADLINE_EXCEEDED", reason="client timeout")
        except aiohttp.ClientError as exc:
            return Reply("UNAVAILABLE", reason=type(exc).__name__)
        if response.status != 200:
            return Reply(f"HTTP_{response.status}", reason=payload[:200].decode(errors="replace"))
        return Reply("OK")

    return send


def _answers(url: str, body: bytes | None = None, key: str = "") -> bool:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class LiteLLMSide:
    """The mock and LiteLLM's proxy in front of it, each in its own process group."""

    def __init__(
        self, run_dir: Path | None = None, venv: Path = VENV, chunk_interval_ms: float = 0.0
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="litellm-side-")
            run_dir = Path(self._tmp.name)
        self.run_dir = run_dir  # the proxy's config and both logs
        self.venv = venv
        self.chunk_interval_ms = chunk_interval_ms  # between a streamed answer's events
        self.master_key = "sk-" + secrets.token_hex(32)
        self.mock_url = f"http://127.0.0.1:{free_port()}"
        self.proxy_url = f"http://127.0.0.1:{free_port()}"
        self.proxy_start_s = 0.0  # from spawning the proxy to its first answered completion
        self._processes: list[Process] = []

    @property
    def version(self) -> str:
        found = sorted(self.venv.glob("lib/python*/site-packages/litellm-*.dist-info"))
        return found[0].name.removeprefix("litellm-").removesuffix(".dist-info") if found else "?"

    def proxy_cpu_s(self) -> float:
        """CPU seconds the proxy's process has used so far (all its threads)."""
        fields = Path(f"/proc/{self._processes[-1].pid}/stat").read_text().rsplit(")", 1)[1]
        user, system = fields.split()[11:13]
        return (int(user) + int(system)) / os.sysconf("SC_CLK_TCK")

    def direct(self, session: aiohttp.ClientSession, timeout_s: float = REQUEST_TIMEOUT_S) -> Send:
        return chat(session, self.mock_url + "/v1/chat/completions", MOCK_KEY, timeout_s)

    def proxied(self, session: aiohttp.ClientSession, timeout_s: float = REQUEST_TIMEOUT_S) -> Send:
        return chat(session, self.proxy_url + "/v1/chat/completions", self.master_key, timeout_s)

    @property
    def pids(self) -> dict[str, int]:
        """The running processes' ids: "openai-mock", and "litellm" once it runs."""
        return {p.name: p.pid for p in self._processes}

    def start(self, proxy: bool = True) -> LiteLLMSide:
        """The mock, then (`proxy`) LiteLLM's proxy in front of it."""
        litellm = self.venv / "bin" / "litellm"
        if proxy and not litellm.exists():
            raise FileNotFoundError(f"{litellm} is missing: run `make {VENV.name}/.installed`")
        try:
            self._start_mock()
            if proxy:
                self._start_proxy(litellm)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_mock(self) -> None:
        port = self.mock_url.rsplit(":", 1)[1]
        argv = [sys.executable, "-m", "loadtest.openai_mock", "--port", port]
        argv += ["--chunk-interval-ms", str(self.chunk_interval_ms)]
        mock = self._spawn("openai-mock", argv, {"PYTHONPATH": str(ROOT)})
        wait_until(lambda: _answers(self.mock_url + "/v1/models"), mock, 30.0)

    def _start_proxy(self, litellm: Path) -> None:
        config = self.run_dir / "litellm.yaml"
        config.write_text(yaml.safe_dump(proxy_config(self.mock_url + "/v1", self.master_key)))
        port = self.proxy_url.rsplit(":", 1)[1]
        argv = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", port]
        started = time.monotonic()
        proxy = self._spawn("litellm", [*argv, "--num_workers", "1"], PROXY_ENV)
        # The first completion through it also loads what it loads lazily (about 1 s).
        url, body = self.proxy_url + "/v1/chat/completions", json.dumps(BODY).encode()
        wait_until(lambda: _answers(url, body, self.master_key), proxy, START_TIMEOUT_S, 0.5)
        self.proxy_start_s = time.monotonic() - started

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        process = Process(name, argv, self.run_dir / f"{name}.log", env)
        self._processes.append(process)
        return process

    def stop(self) -> None:
        """Stops the proxy, then the mock, and kills whatever their process groups left."""
        while self._processes:
            process = self._processes.pop()
            process.stop(grace_s=5.0)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> LiteLLMSide:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Row:
    rate: float
    direct: list[Sample]
    proxied: list[Sample]
    proxy_cpu_s: float  # what the proxy used in its rounds, until it idled again


async def _settle(side: LiteLLMSide, limit_s: float = 60.0) -> None:
    """Waits until the proxy idles: requests that clients gave up on may still be queued
    in it, and would otherwise slow the next round."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        before = side.proxy_cpu_s()
        await asyncio.sleep(0.5)
        if side.proxy_cpu_s() - before < 0.1:  # under 20% of a core
            return


async def compare(
    side: LiteLLMSide, rates: Sequence[float], seconds: float, rounds: int, timeout_s: float
) -> list[Row]:
    """Per rate, `rounds` of (direct, proxied) open-loop loads of `seconds` each."""
    rows = []
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as session:
        paths = (side.direct(session, timeout_s), side.proxied(session, timeout_s))
        for send in paths:  # warm-up: connections, the proxy's first requests
            await Load(send, steady(20.0)).run(duration_s=1.0)
        for rate in rates:
            samples: tuple[list[Sample], list[Sample]] = ([], [])
            cpu_s = 0.0
            for _ in range(rounds):
                for send, kept in zip(paths, samples, strict=True):
                    before = side.proxy_cpu_s()
                    kept += await Load(send, steady(rate)).run(duration_s=seconds)
                    await _settle(side)
                    cpu_s += (side.proxy_cpu_s() - before) if send is paths[1] else 0.0
            rows.append(Row(rate, *samples, cpu_s))
    return rows


def _line(rate: str, path: str, samples: list[Sample], cpu: str = "") -> str:
    latencies = [s.latency_s * 1000 for s in samples]
    errors = Counter(s.status for s in samples if s.status != "OK")
    detail = ", ".join(f"{status} {n}" for status, n in errors.most_common())
    return (
        f"{rate:>6}  {path:<8} {len(samples):6}  {percentile(latencies, 0.5):8.2f}  "
        f"{percentile(latencies, 0.99):8.2f}  {sum(errors.values()):6}  {cpu:>9}  {detail}"
    ).rstrip()


def report(rows: list[Row]) -> None:
    """Per rate: each path's figures, then the proxy's minus the mock's (`added`)."""
    print(
        f"{'rate':>6}  {'path':<8} {'n':>6}  {'p50 ms':>8}  {'p99 ms':>8}  {'errors':>6}  "
        f"{'CPU ms/rq':>9}"
    )
    for row in rows:
        rate = f"{row.rate:g}"
        cpu = f"{row.proxy_cpu_s * 1000 / max(1, len(row.proxied)):.2f}"
        print(_line(rate, "direct", row.direct))
        print(_line(rate, "LiteLLM", row.proxied, cpu))
        added = [
            percentile([s.latency_s * 1000 for s in row.proxied], q)
            - percentile([s.latency_s * 1000 for s in row.direct], q)
            for q in (0.5, 0.99)
        ]
        print(f"{rate:>6}  {'added':<8} {'':6}  {added[0]:8.2f}  {added[1]:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.litellm_side")
    parser.add_argument("--rates", default="50,100,200", help="requests per second, a list")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per path and rate")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    with LiteLLMSide() as side:
        print(
            f"LiteLLM {side.version} proxy (1 worker, answering {side.proxy_start_s:.1f} s "
            f"after its start) vs the same instant mock direct; open loop, "
            f"{args.rounds} x {args.seconds:g} s interleaved rounds per path and rate"
        )
        # asyncio's own loop, not uvloop: uvloop's loop.time(), Load's clock, counts whole ms.
        report(asyncio.run(compare(side, rates, args.seconds, args.rounds, args.timeout)))


if __name__ == "__main__":
    main()

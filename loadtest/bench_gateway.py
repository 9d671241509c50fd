"""The gateway's caches and guardrails, measured side by side in one run (issue 17).

    python -m loadtest.bench_gateway [--requests 300] [--cpu-requests 1000] [--cpu-rounds 5]

1. Answer-cache hits through the edge, beside a miss. Starts a one-region mesh on free
   ports with a fresh data directory, ingests the sample corpus (the standard library's
   docstrings), then sends economy-tier Generate calls over gRPC through Envoy with the demo
   key, one at a time: misses (`bypass_cache`: retrieval and the extractive economy model),
   exact hits (the same questions, answered once before) and semantic hits (their
   paraphrases: the pairs of tests/fixtures/semantic_cache_pairs.jsonl labelled as hits
   that ask about a module the corpus documents). A warm-up answers each question, then
   asks it and its paraphrase once; pairs whose paraphrase the gateway did not serve from
   the semantic cache are listed (with whether the cache's constraints agree on them) and
   left out. Then the three kinds take turns, request by request, the order rotating, so
   the machine's noise hits them alike. Every response's `cache_match.kind` is checked: one
   of the wrong kind is counted, and left out of its kind's latencies. Prints p50/p95/p99
   per kind, each as a ratio to the miss, and the issue's goals (exact p99 <= 2 ms,
   semantic p99 <= 5 ms; Helicone reports 1.6 ms for its exact cache) as PASS or MISS
   lines; a MISS does not fail the run. A hit still pays the call to retrieval
   (services/gateway/core.py: the exact key holds the corpus version retrieval answers
   with, the semantic cache its query vector). The benchmark's gateway keeps answers for
   an hour (answer_cache_ttl_s), so none expires mid-run.
2. Prompt-injection detection: the figures of loadtest/bench_injection.py's `report()`
   (its labelled sets), when that module is there.
3. The guardrails' CPU per request, in process (time.process_time, this process alone), on
   and off: "on" runs what the gateway runs per generate request (services/gateway/
   checks.py): `check_injection` (the policy's guardrails with prompt_injection "flag", so
   nothing raises), `screen_sources` over 5 chunks of about 800 characters, `redact_inputs`,
   a CitationFilter fed a ~600-character answer in 4-character deltas, `grounding` (floor
   0.5) and `record` (the decisions' metrics); "on + PII" the same with redact_pii; "off"
   the same loop without any of them (the deltas joined: the loop's own cost). Each round
   runs the three, the order rotating; prints µs per request of each and the added µs.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from loadtest.bench_semantic_cache import Pair, load_pairs
from loadtest.latency import percentile
from services.client.files import read_document
from services.client.gateway import Client
from services.client.sample_corpus import MODULES, harvest, module_markdown
from services.config.mesh import MeshConfig
from services.config.regions import first
from services.contract.text import split_sentences
from services.control.policy import Guardrails, Policy
from services.gateway import checks
from services.gateway.retrieval_client import Chunk
from services.gateway.semantic_cache import constraints
from services.gateway.values import GenerateParams
from services.guardrails.citations import CitationFilter
from services.supervisor.launcher import ROOT, Mesh, isolated

TIER = "economy"
TIMEOUT_S = 10.0
KINDS = ("miss", "exact", "semantic")
GOALS_MS = {"exact": 2.0, "semantic": 5.0}
HELICONE_EXACT_MS = 1.6
# Words that name what a sample-corpus module documents: a pair that uses one is answered
# by the corpus ("string" is left out: most questions say it of str).
TOPICS = (
    *(m.split(".")[0] for m in MODULES if m != "string"),
    *("regex", "regular expression", "named tuple", "namedtuple", "temporary", "sha-256"),
    *("median", "thread", "zip"),
)
QUESTION = "How do I parse a JSON string into a Python object?"
CHUNK_CHARS, ANSWER_CHARS, DELTA_CHARS = 800, 600, 4


# 1. The answer caches through the edge.


@dataclass
class Kind:
    """One kind of request's latencies (right kind of answer only), wrong kinds, errors."""

    latencies_ms: list[float] = field(default_factory=list)
    wrong: Counter[str] = field(default_factory=Counter)  # by the kind answered instead
    errors: Counter[str] = field(default_factory=Counter)  # by status code


def corpus_pairs() -> list[Pair]:
    """The labelled paraphrase pairs about modules the sample corpus documents."""
    words = re.compile(r"\b(" + "|".join(re.escape(t) for t in TOPICS) + r")\b", re.IGNORECASE)
    return [p for p in load_pairs() if p.hit and words.search(f"{p.a} {p.b}")]


class Asker:
    """Generate calls through the edge, one at a time, on one channel."""

    def __init__(self, target: str, key: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("x-api-key", key),)

    def ask(self, query: str, *, bypass: bool = False) -> pb.GenerateResponse:
        request = pb.GenerateRequest(query=query, tier=TIER, bypass_cache=bypass)
        return self._stub.Generate(request, metadata=self._metadata, timeout=TIMEOUT_S)

    def close(self) -> None:
        self._channel.close()


def warm(asker: Asker, pairs: list[Pair]) -> list[Pair]:
    """Answers each question (filling both caches), then asks it and its paraphrase again;
    the pairs served from the exact and the semantic cache. Prints the others."""
    kept = []
    for pair in pairs:
        first_answer = asker.ask(pair.a)
        exact = asker.ask(pair.a).cache_match.kind or "none"
        semantic = asker.ask(pair.b).cache_match
        if exact == "exact" and semantic.kind == "semantic":
            kept.append(pair)
            continue
        agree = constraints(pair.a).agrees(constraints(pair.b))
        print(
            f"  left out: {pair.a!r} / {pair.b!r}: repeated -> {exact}, paraphrase -> "
            f"{semantic.kind or 'none'} (first answer finish_reason "
            f"{first_answer.finish_reason!r}, degraded {first_answer.degraded}; "
            f"the cache's constraints {'agree' if agree else 'disagree'})"
        )
    return kept


def measure_caches(asker: Asker, pairs: list[Pair], requests: int) -> dict[str, Kind]:
    """`requests` of each kind, taking turns; the order rotates every round."""
    results = {kind: Kind() for kind in KINDS}
    for i in range(requests):
        pair = pairs[i % len(pairs)]
        for kind in KINDS[i % 3 :] + KINDS[: i % 3]:
            query = pair.b if kind == "semantic" else pair.a
            started = time.perf_counter()
            try:
                reply = asker.ask(query, bypass=kind == "miss")
            except grpc.RpcError as exc:
                results[kind].errors[exc.code().name] += 1
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            got = reply.cache_match.kind or "miss"
            if got == kind:
                results[kind].latencies_ms.append(elapsed_ms)
            else:
                results[kind].wrong[got] += 1
    return results


def print_caches(results: dict[str, Kind]) -> None:
    miss = {q: percentile(results["miss"].latencies_ms, q) for q in (0.5, 0.95, 0.99)}
    print(
        f"\n{'kind':9} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'p50/miss':>9} {'p99/miss':>9}  wrong kind, errors"
    )
    for name, kind in results.items():
        at = {q: percentile(kind.latencies_ms, q) for q in (0.5, 0.95, 0.99)}
        wrong = ", ".join(f"{n} {k}" for k, n in sorted(kind.wrong.items())) or "none"
        errors = ", ".join(f"{n} {c}" for c, n in sorted(kind.errors.items())) or "none"
        ratios = (at[q] / miss[q] if miss[q] else float("nan") for q in (0.5, 0.99))
        print(
            f"{name:9} {len(kind.latencies_ms):5d} {at[0.5]:8.2f} {at[0.95]:8.2f} "
            f"{at[0.99]:8.2f} {next(ratios):9.3f} {next(ratios):9.3f}  {wrong}; {errors}"
        )
    print()
    for name, goal in GOALS_MS.items():
        p99 = percentile(results[name].latencies_ms, 0.99)
        verdict = "PASS" if results[name].latencies_ms and p99 <= goal else "MISS"
        print(f"{verdict}: {name} hit p99 {p99:.2f} ms through Envoy (goal <= {goal:g} ms)")
    print(f"(Helicone reports {HELICONE_EXACT_MS} ms for its exact cache)")


def ingest(mesh: Mesh, folder: Path) -> None:
    """The sample corpus, one document a call (each call has the gateway's budget)."""
    client = Client(mesh.edge_target, mesh.config.mesh.demo_key)
    started = time.perf_counter()
    documents = [read_document(p) for p in harvest(folder)]
    chunks = sum(client.ingest([d], progress=False).complete().chunks for d in documents)
    client.close()
    print(
        f"ingested the sample corpus: {len(documents)} documents, {chunks} chunks "
        f"in {time.perf_counter() - started:.1f} s"
    )


def bench_caches(requests: int) -> None:
    base = first(MeshConfig.load(ROOT / "config" / "mesh.yaml"), 1)
    gateway = dataclasses.replace(base.gateway, answer_cache_ttl_s=3600.0)
    base = dataclasses.replace(base, gateway=gateway)
    pairs = corpus_pairs()
    with (
        tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as data,
        Mesh(isolated(base, Path(data))) as mesh,
    ):
        ingest(mesh, Path(data) / "corpus")
        asker = Asker(mesh.edge_target, mesh.config.mesh.demo_key)
        print(f"warm-up: {len(pairs)} labelled paraphrase pairs about corpus modules")
        kept = warm(asker, pairs)
        print(f"  {len(kept)} of {len(pairs)} pairs served from both caches")
        if not kept:
            print("no pair hit both caches: nothing to measure")
            asker.close()
            return
        print(
            f"{requests} requests of each kind, taking turns, concurrency 1, gRPC through "
            f"Envoy, tier {TIER}, over {len(kept)} questions"
        )
        results = measure_caches(asker, kept, requests)
        asker.close()
    print_caches(results)


# 2. Prompt-injection detection.


def bench_injection() -> None:
    """bench_injection's `report()`, printed by its `print_report` (the figures as they
    come where it has none); a line saying why where that module cannot be imported."""
    try:
        import loadtest.bench_injection as bench_injection
    except ImportError as exc:
        print(f"loadtest.bench_injection could not be imported ({exc}): no injection figures")
        return
    figures = bench_injection.report()
    show: Callable[[Any], None] | None = getattr(bench_injection, "print_report", None)
    if show is None:
        print(figures)
    else:
        show(figures)


# 3. The guardrails' CPU per request.


@dataclass(frozen=True)
class Request:
    """What one generate request gives the guardrails: its question, the chunks retrieval
    found, the answer as the model streams it."""

    params: GenerateParams
    chunks: list[Chunk]
    deltas: list[str]


def sample_request() -> Request:
    """5 chunks of documentation of ~800 characters and a ~600-character answer that cites
    them, taken from their sentences, with one claim they do not make."""
    modules = ("json", "functools", "pathlib", "tempfile", "subprocess")
    chunks = [
        Chunk(f"python-{m}", f"python-{m}#0", 0.8, module_markdown(m)[:CHUNK_CHARS], m, {})
        for m in modules
    ]
    sentences = []
    for n, chunk in enumerate(chunks, 1):
        prose = [s for s in split_sentences(chunk.text) if len(s.split()) >= 6 and "#" not in s]
        sentences += [f"{s} [{n}]" for s in prose[:3]]
    answer = "Every thread of the process runs on the moon at noon. "
    for sentence in sentences:
        if len(answer) + len(sentence) > ANSWER_CHARS:
            continue
        answer += sentence + " "
    deltas = [answer[i : i + DELTA_CHARS] for i in range(0, len(answer), DELTA_CHARS)]
    return Request(GenerateParams(query=QUESTION, tier=TIER), chunks, deltas)


def guarded(request: Request, rails: Guardrails) -> str:
    """The guardrails one generate request passes, in the gateway's order."""
    params = checks.with_schema(request.params)
    decisions = checks.check_injection(params, rails)
    _, shown, screened = checks.screen_sources(request.chunks, rails)
    _, shown, redacted = checks.redact_inputs(params, shown, rails)
    markers = CitationFilter(len(shown))
    parts = [markers.feed(delta) for delta in request.deltas]
    answer = "".join(parts) + markers.close()
    grounded = checks.grounding(answer, shown, rails)
    checks.record([*decisions, *screened, *redacted, *([grounded] if grounded else [])])
    return answer


def unguarded(request: Request) -> str:
    """The same request's loop without guardrails: the deltas joined."""
    parts = []
    for delta in request.deltas:
        parts.append(delta)
    return "".join(parts)


def cpu_per_request(run: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        run()
    return (time.process_time() - started) / count


def bench_guardrails(requests: int, rounds: int) -> None:
    policy = Policy.load(ROOT / "config" / "policy.yaml").guardrails("demo")
    on = dataclasses.replace(policy, prompt_injection="flag", groundedness_floor=0.5)
    pii = dataclasses.replace(on, redact_pii=True)
    request = sample_request()
    answer = "".join(request.deltas)
    print(
        f"one request: a {len(request.params.query)}-character question, "
        f"{len(request.chunks)} chunks of {CHUNK_CHARS} characters, a {len(answer)}-character "
        f"answer in {len(request.deltas)} deltas; {requests} requests per variant and round"
    )
    variants: dict[str, Callable[[], object]] = {
        "off": lambda: unguarded(request),
        "on": lambda: guarded(request, on),
        "on + PII redaction": lambda: guarded(request, pii),
    }
    for run in variants.values():  # warm-up: lazy imports, compiled patterns, caches
        cpu_per_request(run, max(requests // 10, 1))
    seen: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    print(f"{'round':>5} " + " ".join(f"{n + ' µs':>22}" for n in names))
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            seen[name].append(cpu_per_request(variants[name], requests) * 1e6)
        print(f"{r + 1:5d} " + " ".join(f"{seen[n][-1]:22.1f}" for n in names))
    off = statistics.median(seen["off"])
    print(f"median of {rounds} rounds, µs of CPU per request:")
    print(f"  off {off:.1f}")
    for name in names[1:]:
        value = statistics.median(seen[name])
        print(f"  {name} {value:.1f} (added {value - off:.1f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per cache kind")
    parser.add_argument("--cpu-requests", type=int, default=1000, help="per variant and round")
    parser.add_argument("--cpu-rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print("== 1. Answer-cache hits through Envoy, beside a miss")
    bench_caches(args.requests)
    print("\n== 2. Prompt-injection detection")
    bench_injection()
    print("\n== 3. Guardrails' CPU per request, in process")
    bench_guardrails(args.cpu_requests, args.cpu_rounds)


if __name__ == "__main__":
    main()

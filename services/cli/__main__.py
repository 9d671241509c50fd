"""The `ragmesh` command: run the mesh, ingest, ask, search, status; tenants, keys, usage.

ragmesh up                      run the local mesh in the foreground
ragmesh ingest docs/ a.pdf      ingest pdf, docx, html, md and txt files
ragmesh ask "how do I parse JSON?" [--stream]
ragmesh search "json decoder"
ragmesh status
ragmesh slo [--window 30]       p95/p99 per layer against the SLO budgets
ragmesh gate RUN.csv            a load run against the SLO budgets (exit 1 on a breach)
ragmesh release --canary-config C.yaml   release rings on the running mesh (1: rolled back)
ragmesh hash-key KEY            the digest to put under gateway.api_keys
ragmesh tenants create|update NAME [--rps N] [--tpm N] [--budget tokens/day=100000:80000]...
ragmesh tenants list | show NAME
ragmesh keys create TENANT [--label team=search]... [--expires-in 90d]
ragmesh keys list TENANT | rotate TENANT KEY_ID [--grace 1h] | revoke TENANT KEY_ID
ragmesh usage TENANT | --mine [--since 30d] [--group-by day|tier|key|model]
ragmesh route --explain TENANT [--priority batch] [--tier economy]
ragmesh gpu-render ...          render triton_models/trtllm for a GPU node (--help)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from ragmesh.v1 import gateway_pb2 as pb

from services.cli import admin, common
from services.client.files import MEDIA_TYPES, find_files, read_document
from services.client.gateway import Client
from services.common.errors import http_status
from services.config.mesh import MeshConfig
from services.control.registry import key_digest


def _client(args: argparse.Namespace) -> Client:
    config = MeshConfig.load(args.config)
    return Client(common.target(args, config), common.api_key(args, config), timeout_s=args.timeout)


def cmd_ask(args: argparse.Namespace) -> None:
    request = pb.GenerateRequest(
        query=args.query,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        tier=args.tier,
        skip_retrieval=args.skip_retrieval,
    )
    client = _client(args)
    if not args.stream:
        reply = client.ask(request)
        print(reply.answer)
        final = reply
    else:
        final = pb.GenerateResponse()
        for event in client.ask_stream(request):
            if event.HasField("final"):
                final = event.final
            elif event.HasField("token"):
                print(event.token, end="", flush=True)
            # An error event is followed by the call's status, which main() reports.
        print()
    for c in final.citations:
        print(f"  [{c.index}] {c.document_id} ({c.chunk_id}, score {c.score:.3f})")
    print(
        f"tier {final.tier}, model {final.model}, region {final.region}, "
        f"cache {pb.CacheStatus.Name(final.cache_status).removeprefix('CACHE_STATUS_').lower()}, "
        f"tokens {final.usage.prompt_tokens}+{final.usage.completion_tokens}, "
        f"finish {final.finish_reason or 'not reported'}, "
        f"corpus v{final.corpus_version or '-'}, "
        f"trace {final.trace_id}"
    )
    if final.degraded:
        print(f"degraded: {final.degraded_reason}")


def cmd_search(args: argparse.Namespace) -> None:
    reply = _client(args).search(pb.SearchRequest(query=args.query, top_k=args.top_k))
    for hit in reply.hits:
        print(f"{hit.score:.3f}  {hit.chunk_id}  {hit.text[:100]!r}")
    print(f"corpus v{reply.corpus_version}")


def cmd_ingest(args: argparse.Namespace) -> None:
    """Sends each file's bytes; a file that cannot be read here or by the server is told
    by its path, the others ingested all the same; exit 1 if any file was not."""
    files = list(find_files([Path(p) for p in args.paths]))
    if not files:
        sys.exit(f"no {', '.join(sorted(MEDIA_TYPES))} files found")
    sent: list[Path] = []
    failed: list[tuple[Path, str]] = []

    def documents() -> Iterator[pb.Document]:
        for path, name in files:
            try:
                document = read_document(path, name)
            except OSError as exc:
                failed.append((path, exc.strerror or str(exc)))
                continue
            sent.append(path)
            yield document

    stored = _client(args).ingest(documents(), total=len(files), progress=not args.quiet)
    failed += [(sent[n], why) for n, why in stored.failed]
    for path, why in failed:
        print(f"not ingested: {path}: {why}")
    print(
        f"ingested {stored.documents} documents as {stored.chunks} chunks; "
        f"corpus version {stored.corpus_version or '-'}"
        + (f"; {len(failed)} of {len(files)} files failed" if failed else "")
    )
    if failed:
        sys.exit(1)


def cmd_status(args: argparse.Namespace) -> None:
    reply = _client(args).status()
    lag = "unknown" if reply.corpus_lag < 0 else f"{reply.corpus_lag} entries"
    print(
        f"region {reply.region}, tenant {reply.tenant}, corpus v{reply.corpus_version} "
        f"(replica {reply.corpus_region or '?'}, lag {lag})"
    )
    for d in reply.dependencies:
        state = "up  " if d.healthy else "DOWN"
        print(f"  {d.name:14} {state} breaker {d.breaker:9} {d.target}  {d.detail}")


def cmd_slo(args: argparse.Namespace) -> None:
    from services.console.gate import table
    from services.console.layers import slo
    from services.console.observe import Observer

    config = MeshConfig.load(args.config)
    observer = Observer(config, window_s=args.window)
    observer.poll()
    if args.window > 0:
        time.sleep(args.window)
        observer.poll()
    span = f"the last {args.window:g} s" if args.window > 0 else "each process's lifetime"
    print(f"SLO budgets (p99) over {span}")
    rows = slo(observer, config.slo)
    print(table(rows))
    if not all(row.ok for row in rows):
        sys.exit(1)


def cmd_gate(args: argparse.Namespace) -> None:
    from services.console.gate import GATED, breaches, read_csv, table

    config = MeshConfig.load(args.config)
    try:
        rows = read_csv(Path(args.csv))
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.csv} against the SLO budgets of {args.config}")
    print(table(rows, GATED))
    broken = breaches(rows, config.slo)
    for breach in broken:
        print(f"BREACH {breach}")
    if broken:
        sys.exit(1)
    print("within every budget")


def cmd_release(args: argparse.Namespace) -> None:
    from services.config.regions import first
    from services.console.canary import table
    from services.supervisor.release import run

    try:
        # The running mesh's regions: a canary for a region it does not run would never
        # serve, and the release would stop before ring 0.
        stable = first(MeshConfig.load(args.config), args.regions)
        canary = MeshConfig.load(args.canary_config)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"releasing {args.canary_config} on the running mesh of {args.config}", flush=True)
    try:
        outcome = run(stable, canary)
    except (OSError, RuntimeError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(table(outcome.verdicts))
    if not outcome.promoted:
        print("ROLLED BACK: every request on the stable gateways; the canaries are stopped")
        sys.exit(1)
    print(
        f"PROMOTED: {args.canary_config} passed every ring. Traffic is back on the stable "
        "gateways and the canaries are stopped; restart the mesh on it to make it stable"
    )


def cmd_up(args: argparse.Namespace) -> None:
    from services.config.regions import first
    from services.supervisor.up import run

    try:
        config = first(MeshConfig.load(args.config), args.regions)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    run(config, sample=not args.no_sample, traces=args.traces)


def cmd_hash_key(args: argparse.Namespace) -> None:
    print(key_digest(args.key))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="ragmesh", description=__doc__.splitlines()[0])
    root.add_argument("--config", default="config/mesh.yaml", help="mesh config (YAML)")
    root.add_argument("--target", default="", help="gRPC address (default: the Envoy edge)")
    root.add_argument("--api-key", default="", help="default: $RAGMESH_API_KEY or the demo key")
    root.add_argument(
        "--admin-key", default="", help="default: $RAGMESH_ADMIN_KEY or the demo admin key"
    )
    root.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    commands = root.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the local mesh in the foreground")
    up.add_argument("--no-sample", action="store_true", help="skip the sample corpus")
    up.add_argument(
        "--regions", type=int, default=1, help="run the first N regions of mesh.regions"
    )
    up.add_argument(
        "--traces",
        action="store_true",
        help="also run Arize Phoenix (.venv-phoenix, `make up TRACES=1`) and trace into it",
    )
    up.set_defaults(run=cmd_up)
    ask = commands.add_parser("ask", help="answer a question with citations")
    ask.add_argument("query")
    ask.add_argument("--stream", action="store_true", help="print tokens as they come")
    ask.add_argument("--top-k", type=int, default=0)
    ask.add_argument("--max-tokens", type=int, default=0)
    ask.add_argument("--tier", default="", help="standard, economy, ... (default: the gateway's)")
    ask.add_argument(
        "--skip-retrieval", action="store_true", help="ask the model alone: no sources"
    )
    ask.set_defaults(run=cmd_ask)
    search = commands.add_parser("search", help="show the chunks a question retrieves")
    search.add_argument("query")
    search.add_argument("--top-k", type=int, default=0)
    search.set_defaults(run=cmd_search)
    ingest = commands.add_parser(
        "ingest", help="ingest pdf, docx, html, md and txt files or folders (exit 1 if any fails)"
    )
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.set_defaults(run=cmd_ingest)
    status = commands.add_parser("status", help="region, corpus version, dependencies")
    status.set_defaults(run=cmd_status)
    slo = commands.add_parser("slo", help="p95/p99 per layer against the SLO budgets")
    slo.add_argument(
        "--window", type=float, default=0.0, help="seconds to watch (0: since each start)"
    )
    slo.set_defaults(run=cmd_slo)
    gate = commands.add_parser("gate", help="hold a load run (`make loadtest`) to the budgets")
    gate.add_argument("csv", metavar="RUN.csv", help="a run's CSV, e.g. build/loadtest/steady.csv")
    gate.set_defaults(run=cmd_gate)
    release = commands.add_parser(
        "release",
        help="take a second gateway build through the release rings of the running mesh "
        "(exit 1: rolled back)",
    )
    release.add_argument(
        "--canary-config", required=True, help="the canary's mesh config (YAML): its gateway"
    )
    release.add_argument(
        "--regions",
        type=int,
        default=1,
        help="the regions the running mesh runs, as `up --regions` (make up REGIONS=N)",
    )
    release.set_defaults(run=cmd_release)
    # Its flags are services.triton.trtllm's own; main() hands them over.
    commands.add_parser(
        "gpu-render",
        help="render the TensorRT-LLM model repository for a GPU node (docs/gpu.md)",
        add_help=False,
    )
    hash_key = commands.add_parser("hash-key", help="print the sha256 the config stores")
    hash_key.add_argument("key")
    hash_key.set_defaults(run=cmd_hash_key)
    admin.add_parsers(commands)
    return root


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    args, rest = parser().parse_known_args(argv)
    if args.command == "gpu-render":
        from services.triton import trtllm

        sys.exit(trtllm.main(rest, prog="ragmesh gpu-render"))
    if rest:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.run(args)
    except grpc.RpcError as exc:
        code = exc.code()
        sys.exit(f"error: {code.name} (HTTP {http_status(code)}): {exc.details()}")


if __name__ == "__main__":
    main()

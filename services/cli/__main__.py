"""The `ragmesh` command: run the mesh, ingest, ask, search, status; tenants, keys, usage.

ragmesh up                      run the local mesh in the foreground
ragmesh ingest docs/ notes.md   ingest txt, md and html files
ragmesh ask "how do I parse JSON?" [--stream]
ragmesh search "json decoder"
ragmesh status
ragmesh slo [--window 30]       p95/p99 per layer against the SLO budgets
ragmesh gate RUN.csv            a load run against the SLO budgets (exit 1 on a breach)
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
import math
import os
import re
import sys
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import grpc
from ragmesh.v1 import admin_pb2
from ragmesh.v1 import gateway_pb2 as pb

from services.client.admin import AdminClient, own_usage
from services.client.files import find_files, read_document
from services.client.gateway import Client
from services.common.errors import http_status
from services.config.mesh import MeshConfig
from services.control.registry import METRICS, WINDOWS, key_digest

BUDGET_FORM = "METRIC/WINDOW=HARD[:SOFT], e.g. tokens/day=100000:80000 or requests/day=:1000"
DURATION_FORM = "a DURATION like 90s, 30m, 12h or 30d"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _target(args: argparse.Namespace, config: MeshConfig) -> str:
    return args.target or f"127.0.0.1:{config.edge.listen_port}"


def _api_key(args: argparse.Namespace, config: MeshConfig) -> str:
    return args.api_key or os.environ.get("RAGMESH_API_KEY") or config.mesh.demo_key


def _client(args: argparse.Namespace) -> Client:
    config = MeshConfig.load(args.config)
    return Client(_target(args, config), _api_key(args, config), timeout_s=args.timeout)


def _admin(args: argparse.Namespace) -> AdminClient:
    config = MeshConfig.load(args.config)
    key = args.admin_key or os.environ.get("RAGMESH_ADMIN_KEY") or config.mesh.demo_admin_key
    return AdminClient(_target(args, config), key, timeout_s=args.timeout)


def parse_budget(text: str) -> admin_pb2.Budget:
    """`METRIC/WINDOW=HARD[:SOFT]` (tokens/day=100000:80000, cost_usd/month=50,
    requests/day=:1000) as a Budget; argparse names the option in the error."""
    head, eq, limits = text.partition("=")
    metric, slash, window = head.partition("/")
    hard_text, _, soft_text = limits.partition(":")
    if not (eq and slash) or metric not in METRICS or window not in WINDOWS:
        raise argparse.ArgumentTypeError(
            f"expected {BUDGET_FORM}, with METRIC one of {', '.join(METRICS)} and WINDOW "
            f"one of {', '.join(WINDOWS)}; got {text!r}"
        )
    try:
        hard, soft = (float(v) if v else 0.0 for v in (hard_text, soft_text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {BUDGET_FORM}; got {text!r}") from None
    if not (math.isfinite(hard) and math.isfinite(soft)) or hard < 0 or soft < 0:
        raise argparse.ArgumentTypeError(f"HARD and SOFT must be numbers >= 0; got {text!r}")
    if not hard and not soft:
        raise argparse.ArgumentTypeError(f"give HARD, SOFT or both ({BUDGET_FORM}); got {text!r}")
    if hard and soft > hard:
        raise argparse.ArgumentTypeError(f"SOFT must not exceed HARD; got {text!r}")
    return admin_pb2.Budget(metric=metric, window=window, hard=hard, soft=soft)


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `12h`, `30d` as seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected {DURATION_FORM}; got {text!r}")
    return int(match[1]) * _SECONDS[match[2]]


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0 (0: no limit); got {text!r}"
        )
    return int(text)


def _label(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not (eq and key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. team=search; got {text!r}")
    return key, value


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _spec(budget: admin_pb2.Budget) -> str:
    soft = f":{_number(budget.soft)}" if budget.soft else ""
    hard = _number(budget.hard) if budget.hard else ""
    return f"{budget.metric}/{budget.window}={hard}{soft}"


def _when(ms: int, zero: str = "never") -> str:
    if not ms:
        return zero
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def _table(rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """`rows[0]` is the header; columns as wide as their widest cell, `numeric` ones right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


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
    documents = [read_document(p) for p in find_files([Path(p) for p in args.paths])]
    if not documents:
        sys.exit("no txt, md or html files found")
    done, chunks, version = _client(args).ingest(documents, progress=not args.quiet)
    print(f"ingested {done} documents as {chunks} chunks; corpus version {version}")


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


def _print_tenant(tenant: admin_pb2.Tenant) -> None:
    print(f"tenant {tenant.name}, created {_when(tenant.created_ms, '-')}")
    print(f"  requests per second per key: {tenant.requests_per_second or 'no limit'}")
    print(f"  tokens per minute per key:   {tenant.tokens_per_minute or 'no limit'}")
    for budget in tenant.budgets:
        print(f"  budget {_spec(budget)}")
    if not tenant.budgets:
        print("  no budgets")


def cmd_tenants_put(args: argparse.Namespace) -> None:
    tenant = admin_pb2.Tenant(
        name=args.name,
        requests_per_second=args.rps,
        tokens_per_minute=args.tpm,
        budgets=args.budget or [],
    )
    with closing(_admin(args)) as admin:
        put = admin.create_tenant if args.action == "create" else admin.update_tenant
        _print_tenant(put(tenant))


def cmd_tenants_show(args: argparse.Namespace) -> None:
    with closing(_admin(args)) as admin:
        _print_tenant(admin.get_tenant(args.name))


def cmd_tenants_list(args: argparse.Namespace) -> None:
    with closing(_admin(args)) as admin:
        tenants = admin.list_tenants().tenants
    rows = [["name", "rps", "tpm", "budgets", "created"]]
    rows += [
        [
            t.name,
            str(t.requests_per_second or "-"),
            str(t.tokens_per_minute or "-"),
            " ".join(_spec(b) for b in t.budgets) or "-",
            _when(t.created_ms, "-"),
        ]
        for t in tenants
    ]
    print(_table(rows, numeric=(1, 2)))


def _print_created(created: admin_pb2.CreatedKey) -> None:
    record = created.record
    print(created.key)
    print(
        f"key id {record.id} of tenant {record.tenant}, expires {_when(record.expires_ms)}; "
        "the key is not shown again: keep it now"
    )


def cmd_keys_create(args: argparse.Namespace) -> None:
    expires_ms = 0 if args.expires_in is None else int((time.time() + args.expires_in) * 1000)
    request = admin_pb2.CreateKeyRequest(
        tenant=args.tenant, labels=dict(args.label or []), expires_ms=expires_ms
    )
    with closing(_admin(args)) as admin:
        _print_created(admin.create_key(request))


def cmd_keys_list(args: argparse.Namespace) -> None:
    with closing(_admin(args)) as admin:
        keys = admin.list_keys(args.tenant).keys
    rows = [["id", "labels", "created", "expires", "revoked"]]
    rows += [
        [
            k.id,
            ",".join(f"{name}={value}" for name, value in sorted(k.labels.items())) or "-",
            _when(k.created_ms, "-"),
            _when(k.expires_ms),
            _revoked(k.revoked_ms),
        ]
        for k in keys
    ]
    print(_table(rows))


def _revoked(ms: int) -> str:
    """A rotated key's revocation may lie ahead, at the end of its grace."""
    return _when(ms, "-") + (" (grace until then)" if ms > time.time() * 1000 else "")


def cmd_keys_rotate(args: argparse.Namespace) -> None:
    request = admin_pb2.RotateKeyRequest(tenant=args.tenant, key_id=args.key_id, grace_s=args.grace)
    with closing(_admin(args)) as admin:
        _print_created(admin.rotate_key(request))
    grace = f"keeps working for {args.grace} s" if args.grace else "is revoked now"
    print(f"the old key {args.key_id} {grace}")


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    request = admin_pb2.RevokeKeyRequest(tenant=args.tenant, key_id=args.key_id)
    with closing(_admin(args)) as admin:
        record = admin.revoke_key(request)
    print(
        f"key {record.id} of tenant {record.tenant} revoked at {_when(record.revoked_ms, '-')}; "
        "every region refuses it within the registry refresh"
    )


def cmd_usage(args: argparse.Namespace) -> None:
    start_ms = int((time.time() - args.since) * 1000)
    request = admin_pb2.GetUsageRequest(
        tenant=args.tenant, start_ms=start_ms, group_by=args.group_by
    )
    if args.mine:
        config = MeshConfig.load(args.config)
        target, key = _target(args, config), _api_key(args, config)
        reply = own_usage(target, key, request, timeout_s=args.timeout)
    else:
        with closing(_admin(args)) as admin:
            reply = admin.usage(request)
    print(f"usage of tenant {reply.tenant} since {_when(start_ms)}, by {args.group_by}")
    rows = [["group", "requests", "input tokens", "output tokens", "cost (USD)"]]
    for r in [*reply.rows, _total(reply.rows)]:
        counts = [r.requests, r.input_tokens, r.output_tokens]
        rows.append([r.group, *(str(c) for c in counts), f"{r.cost_usd:.6f}"])
    print(_table(rows, numeric=(1, 2, 3, 4)))


def _total(rows: Iterable[admin_pb2.UsageRow]) -> admin_pb2.UsageRow:
    total = admin_pb2.UsageRow(group="total")
    for r in rows:
        total.requests += r.requests
        total.input_tokens += r.input_tokens
        total.output_tokens += r.output_tokens
        total.cost_usd += r.cost_usd
    return total


def cmd_route(args: argparse.Namespace) -> None:
    request = admin_pb2.ExplainRouteRequest(
        tenant=args.explain, priority=args.priority, tier=args.tier
    )
    with closing(_admin(args)) as admin:
        reply = admin.explain_route(request)
    print(f"tier {reply.tier}, reason {reply.reason}")
    print(f"  detail: {reply.detail or '-'}")
    print(f"  over its soft cap: {'yes' if reply.over_soft_cap else 'no'}")
    rows = [["tier", "p95 TTFT", "breaker"]]
    for t in reply.tiers:
        p95 = "too few samples" if t.ttft_p95_ms < 0 else f"{t.ttft_p95_ms:.1f} ms"
        rows.append([t.tier, p95, "OPEN" if t.breaker_open else "closed"])
    print(_table(rows))
    print(f"policy {reply.policy_file or '-'}")
    if reply.policy_error:
        print(f"  its last edit was refused, the previous policy is in use: {reply.policy_error}")


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
    ingest = commands.add_parser("ingest", help="ingest txt, md and html files or folders")
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
    # Its flags are services.triton.trtllm's own; main() hands them over.
    commands.add_parser(
        "gpu-render",
        help="render the TensorRT-LLM model repository for a GPU node (docs/gpu.md)",
        add_help=False,
    )
    hash_key = commands.add_parser("hash-key", help="print the sha256 the config stores")
    hash_key.add_argument("key")
    hash_key.set_defaults(run=cmd_hash_key)
    _admin_parsers(commands)
    return root


def _tenant_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("name", metavar="NAME")
    command.add_argument("--rps", type=_count, default=0, help="requests per second per key")
    command.add_argument("--tpm", type=_count, default=0, help="tokens per minute per key")
    command.add_argument(
        "--budget", type=parse_budget, action="append", metavar="SPEC", help=BUDGET_FORM
    )


def _admin_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The admin commands (x-admin-key: --admin-key, $RAGMESH_ADMIN_KEY or the demo one)."""
    tenants = commands.add_parser("tenants", help="create, update, list and show tenants")
    actions = tenants.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new tenant")
    _tenant_options(create)
    create.set_defaults(run=cmd_tenants_put)
    update = actions.add_parser("update", help="replace a tenant's limits and budgets")
    _tenant_options(update)
    update.set_defaults(run=cmd_tenants_put)
    actions.add_parser("list", help="every tenant").set_defaults(run=cmd_tenants_list)
    show = actions.add_parser("show", help="one tenant's limits and budgets")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(run=cmd_tenants_show)

    keys = commands.add_parser("keys", help="create, list, rotate and revoke a tenant's keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed this once")
    create.add_argument("tenant", metavar="TENANT")
    create.add_argument("--label", type=_label, action="append", metavar="KEY=VALUE")
    create.add_argument("--expires-in", type=parse_duration, metavar="DURATION", help="90s, 30d")
    create.set_defaults(run=cmd_keys_create)
    listing = actions.add_parser("list", help="a tenant's keys (never the keys themselves)")
    listing.add_argument("tenant", metavar="TENANT")
    listing.set_defaults(run=cmd_keys_list)
    rotate = actions.add_parser("rotate", help="a new key with the old one's labels and expiry")
    rotate.add_argument("tenant", metavar="TENANT")
    rotate.add_argument("key_id", metavar="KEY_ID")
    rotate.add_argument(
        "--grace",
        type=parse_duration,
        default=0,
        metavar="DURATION",
        help="how long the old key keeps working (default: revoked at once)",
    )
    rotate.set_defaults(run=cmd_keys_rotate)
    revoke = actions.add_parser("revoke", help="refuse a key in every region")
    revoke.add_argument("tenant", metavar="TENANT")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(run=cmd_keys_revoke)

    usage = commands.add_parser("usage", help="a tenant's requests, tokens and cost")
    whose = usage.add_mutually_exclusive_group(required=True)
    whose.add_argument("tenant", metavar="TENANT", nargs="?", default="")
    whose.add_argument("--mine", action="store_true", help="the --api-key's own tenant")
    usage.add_argument("--since", type=parse_duration, default=30 * 86_400, metavar="DURATION")
    usage.add_argument("--group-by", choices=("day", "tier", "key", "model"), default="day")
    usage.set_defaults(run=cmd_usage)

    route = commands.add_parser("route", help="the tier the routing policy would choose, and why")
    route.add_argument("--explain", metavar="TENANT", required=True)
    route.add_argument("--priority", choices=("critical", "standard", "batch"), default="")
    route.add_argument("--tier", default="", help="a tier the request would name")
    route.set_defaults(run=cmd_route)


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

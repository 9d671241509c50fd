"""The control plane's admin commands of `ragmesh`: tenants, keys, usage, route --explain.

They call the gateway's admin API with an x-admin-key (--admin-key, $RAGMESH_ADMIN_KEY or the
demo admin key); `usage --mine` asks with the --api-key instead. `add_parsers` adds them to
the `ragmesh` command (services/cli/__main__.py).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time
from collections.abc import Iterable
from contextlib import closing

from ragmesh.v1 import admin_pb2

from services.cli import common
from services.client.admin import AdminClient
from services.client.gateway import Client
from services.config.mesh import MeshConfig
from services.control.registry import MAX_CAP, METRICS, WINDOWS

BUDGET_FORM = "METRIC/WINDOW=HARD[:SOFT], e.g. tokens/day=100000:80000 or requests/day=:1000"
DURATION_FORM = "a DURATION like 90s, 30m, 12h or 30d"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _admin(args: argparse.Namespace) -> AdminClient:
    config = MeshConfig.load(args.config)
    key = args.admin_key or os.environ.get("RAGMESH_ADMIN_KEY") or config.mesh.demo_admin_key
    return AdminClient(common.target(args, config), key, timeout_s=args.timeout)


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
    if not text.isascii() or not text.isdigit() or int(text) > MAX_CAP:
        raise argparse.ArgumentTypeError(
            f"expected a whole number 0..{MAX_CAP:g} (0: no limit); got {text[:32]!r}"
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
        target, key = common.target(args, config), common.api_key(args, config)
        with closing(Client(target, key, timeout_s=args.timeout)) as client:
            reply = client.usage(request)
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


def _tenant_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("name", metavar="NAME")
    command.add_argument("--rps", type=_count, default=0, help="requests per second per key")
    command.add_argument("--tpm", type=_count, default=0, help="tokens per minute per key")
    command.add_argument(
        "--budget", type=parse_budget, action="append", metavar="SPEC", help=BUDGET_FORM
    )


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add tenants, keys, usage and route to `commands` (x-admin-key: --admin-key,
    $RAGMESH_ADMIN_KEY or the demo one)."""
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

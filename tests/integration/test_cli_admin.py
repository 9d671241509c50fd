"""`ragmesh tenants|keys|usage|route` against the real mesh, through its Envoy edge: a tenant
with a budget, a key that works until it is revoked, usage tables, a route explained, and a
wrong admin credential refused."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from ragmesh.v1 import gateway_pb2 as pb
from ragmesh.v1 import gateway_pb2_grpc

from services.cli.__main__ import main
from services.supervisor.launcher import Mesh

pytestmark = pytest.mark.integration

REFRESH_S = 3.0  # a revoked key is refused within the registry refresh; generous here


@pytest.fixture(scope="module")
def config_path(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "mesh.yaml"
    path.write_text(yaml.safe_dump(mesh.config.to_dict()), encoding="utf-8")
    return path


@pytest.fixture
def cli(
    config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., str]:
    """cli("keys", "list", "t") -> what the command printed; the credentials are the config's."""
    monkeypatch.delenv("RAGMESH_ADMIN_KEY", raising=False)
    monkeypatch.delenv("RAGMESH_API_KEY", raising=False)

    def run(*argv: str) -> str:
        capsys.readouterr()
        main(["--config", str(config_path), "--timeout", "30", *argv])
        return capsys.readouterr().out

    return run


@pytest.fixture
def tenant(cli: Callable[..., str]) -> str:
    name = f"cli-{secrets.token_hex(4)}"
    out = cli("tenants", "create", name, "--rps", "50", "--budget", "requests/day=100000:90000")
    assert f"tenant {name}" in out and "budget requests/day=100000:90000" in out
    return name


def _search(mesh: Mesh, key: str) -> grpc.StatusCode:
    with grpc.insecure_channel(mesh.edge_target) as channel:
        try:
            gateway_pb2_grpc.GatewayStub(channel).Search(
                pb.SearchRequest(query="tea"), metadata=(("x-api-key", key),), timeout=30
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _until(mesh: Mesh, key: str, code: grpc.StatusCode) -> grpc.StatusCode:
    """Searches with `key` until the answer is `code` or REFRESH_S has passed; the last answer."""
    deadline = time.monotonic() + REFRESH_S
    while (got := _search(mesh, key)) != code and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def test_a_key_works_until_revoked(mesh: Mesh, cli: Callable[..., str], tenant: str) -> None:
    shown = cli("tenants", "show", tenant)
    assert "requests per second per key: 50" in shown
    assert "budget requests/day=100000:90000" in shown
    assert tenant in cli("tenants", "list")

    key_line, note, *_ = cli("keys", "create", tenant, "--label", "team=cli").splitlines()
    assert key_line.startswith("rmk-") and "not shown again" in note
    key_id = note.split()[2]
    assert key_id in key_line
    assert _until(mesh, key_line, grpc.StatusCode.OK) == grpc.StatusCode.OK

    listed = cli("keys", "list", tenant)
    assert key_id in listed and "team=cli" in listed
    secret = key_line.removeprefix(f"rmk-{key_id}-")  # token_urlsafe's: it may hold a "-"
    assert len(secret) == 32 and key_line not in listed and secret not in listed

    assert f"key {key_id} of tenant {tenant} revoked" in cli("keys", "revoke", tenant, key_id)
    assert _until(mesh, key_line, grpc.StatusCode.UNAUTHENTICATED) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_rotate_prints_a_new_key(mesh: Mesh, cli: Callable[..., str], tenant: str) -> None:
    old_key, note, *_ = cli("keys", "create", tenant).splitlines()
    old_id = note.split()[2]
    new_key, new_note, last = cli("keys", "rotate", tenant, old_id).splitlines()
    assert new_key.startswith("rmk-") and new_key != old_key and "not shown again" in new_note
    assert f"the old key {old_id} is revoked now" == last
    assert _until(mesh, new_key, grpc.StatusCode.OK) == grpc.StatusCode.OK
    assert _until(mesh, old_key, grpc.StatusCode.UNAUTHENTICATED) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_update_replaces_limits_and_budgets(cli: Callable[..., str], tenant: str) -> None:
    out = cli("tenants", "update", tenant, "--budget", "cost_usd/month=50", "--tpm", "9000")
    assert "requests per second per key: no limit" in out
    assert "tokens per minute per key:   9000" in out
    assert "budget cost_usd/month=50" in out and "requests/day" not in out


def test_usage_tables(mesh: Mesh, cli: Callable[..., str], tenant: str) -> None:
    assert _search(mesh, mesh.config.mesh.demo_key) == grpc.StatusCode.OK
    mine = cli("usage", "--mine", "--since", "1d").splitlines()
    assert mine[0].startswith("usage of tenant ") and mine[0].endswith(", by day")
    header = ["group", "requests", "input", "tokens", "output", "tokens", "cost", "(USD)"]
    assert mine[1].split() == header
    assert mine[-1].split()[0] == "total" and len(mine[-1].split()[-1].split(".")[1]) == 6

    theirs = cli("usage", tenant, "--group-by", "key").splitlines()
    assert theirs[0].startswith(f"usage of tenant {tenant} since ")
    assert theirs[-1].split() == ["total", "0", "0", "0", "0.000000"]


def test_route_explain(cli: Callable[..., str], tenant: str) -> None:
    out = cli("route", "--explain", tenant, "--priority", "batch").splitlines()
    first = out[0].split()
    assert first[0] == "tier" and first[2] == "reason"
    reasons = {"requested", "criticality", "latency_guardrail", "breaker_open", "soft_cap"}
    assert first[3] in reasons
    assert "  over its soft cap: no" in out
    assert out[3].split() == ["tier", "p95", "TTFT", "breaker"]
    assert out[-1].startswith("policy ") or out[-1].startswith("  its last edit was refused")


def test_a_wrong_admin_key_is_refused(cli: Callable[..., str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli("--admin-key", "rma-not-the-one", "tenants", "list")
    assert exit_.value.code not in (0, None)
    assert "PERMISSION_DENIED (HTTP 403)" in str(exit_.value.code)

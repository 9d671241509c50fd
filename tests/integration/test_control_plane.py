"""The control plane on the real mesh: tenants and keys through the admin API, caps that hold
under concurrency and across two regions, the store killed under load, routing by policy."""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis
from google.rpc import error_details_pb2, status_pb2
from ragmesh.v1 import admin_pb2 as apb
from ragmesh.v1 import admin_pb2_grpc, gateway_pb2_grpc
from ragmesh.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.integration


def _admin(mesh, target: str = ""):
    channel = grpc.insecure_channel(target or mesh.edge_target)
    stub = admin_pb2_grpc.AdminStub(channel)
    metadata = (("x-admin-key", mesh.config.mesh.demo_admin_key),)
    return stub, metadata


def _tenant(mesh, **limits) -> tuple[str, str, str]:
    """A new tenant with `limits` and one key: (name, key, key id)."""
    stub, md = _admin(mesh)
    name = f"t-{secrets.token_hex(4)}"
    budgets = [apb.Budget(**b) for b in limits.pop("budgets", [])]
    stub.CreateTenant(apb.Tenant(name=name, budgets=budgets, **limits), metadata=md, timeout=10)
    created = stub.CreateKey(apb.CreateKeyRequest(tenant=name), metadata=md, timeout=10)
    return name, created.key, created.record.id


def _gateway(target: str):
    return gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(target))


def _until_usable(targets: list[str], key: str, timeout_s: float = 5.0) -> None:
    """Every gateway's registry copy has the key (they reload within registry_refresh_s)."""
    deadline = time.monotonic() + timeout_s
    for target in targets:
        while True:
            try:
                _gateway(target).Search(
                    pb.SearchRequest(query="ready?"), metadata=(("x-api-key", key),), timeout=10
                )
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                assert time.monotonic() < deadline, f"{target} never knew the key"
                time.sleep(0.05)


def _ask(stub, key: str, **fields) -> pb.GenerateResponse:
    request = pb.GenerateRequest(
        **{"tier": "economy", "max_tokens": 16, "bypass_cache": True, **fields}
    )
    return stub.Generate(request, metadata=(("x-api-key", key),), timeout=60)


def _usage(mesh, tenant: str, group_by: str = "tier") -> list[apb.UsageRow]:
    time.sleep(mesh.config.control.usage_flush_s + 0.5)  # records are written in batches
    stub, md = _admin(mesh)
    request = apb.GetUsageRequest(tenant=tenant, group_by=group_by)
    return list(stub.GetUsage(request, metadata=md, timeout=10).rows)


def _details(error: grpc.RpcError) -> status_pb2.Status:
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def _http(mesh, method: str, path: str, headers: dict[str, str], body: object = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        mesh.http_url + path,
        data=data,
        method=method,
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


# -- tenants and keys ---------------------------------------------------------------------


def test_admin_api_needs_the_admin_credential(mesh, demo_key):
    stub = admin_pb2_grpc.AdminStub(grpc.insecure_channel(mesh.edge_target))
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-admin-key", "wrong"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("x-api-key", demo_key),), grpc.StatusCode.UNAUTHENTICATED),  # a tenant key is none
        ((("x-admin-key", demo_key),), grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListTenants(apb.ListTenantsRequest(), metadata=metadata, timeout=10)
        assert caught.value.code() == code
    status, _, body = _http(mesh, "GET", "/v1/admin/tenants", {"x-admin-key": "wrong"})
    assert status == 403, body


def test_a_key_is_shown_once_and_stored_as_a_digest(mesh):
    name, key, key_id = _tenant(mesh)
    stub, md = _admin(mesh)
    listed = stub.ListKeys(apb.ListKeysRequest(tenant=name), metadata=md, timeout=10)
    assert [k.id for k in listed.keys] == [key_id]
    assert key.startswith(f"rmk-{key_id}-")
    # The secret is token_urlsafe's, which may hold or end with "-": cut at the id, not a "-".
    secret = key.removeprefix(f"rmk-{key_id}-")
    assert len(secret) == 32 and key not in str(listed) and secret not in str(listed)


def test_two_tenants_never_see_each_others_keys_usage_documents_or_cache(mesh):
    a, key_a, id_a = _tenant(mesh)
    b, key_b, _ = _tenant(mesh)
    stub = _gateway(mesh.edge_target)
    _until_usable([mesh.edge_target], key_a)
    _until_usable([mesh.edge_target], key_b)
    document = pb.Document(id="secret", title="A's plan", text="Tenant A launches in March.")
    stub.IngestDocuments(
        pb.IngestDocumentsRequest(documents=[document]),
        metadata=(("x-api-key", key_a),),
        timeout=120,
    )
    found = stub.Search(
        pb.SearchRequest(query="When does tenant A launch?"),
        metadata=(("x-api-key", key_b),),
        timeout=30,
    )
    assert found.hits == []
    # The answer cache: A's answer is not B's.
    question = dict(query="When does tenant A launch?", bypass_cache=False)
    first = _ask(stub, key_a, **question)
    assert _ask(stub, key_a, **question).cache_status == pb.CACHE_STATUS_HIT
    theirs = _ask(stub, key_b, **question)
    assert theirs.cache_status == pb.CACHE_STATUS_MISS
    assert theirs.answer != first.answer
    # Usage: B's key reads B's own, and cannot name A.
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetUsage(apb.GetUsageRequest(tenant=a), metadata=(("x-api-key", key_b),), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    time.sleep(mesh.config.control.usage_flush_s + 0.5)
    own = stub.GetUsage(apb.GetUsageRequest(group_by="key"), metadata=(("x-api-key", key_b),))
    assert own.tenant == b
    assert id_a not in {row.group for row in own.rows}
    assert sum(row.requests for row in own.rows) == 1
    # Keys: the admin API answers A's key under A only.
    admin, md = _admin(mesh)
    with pytest.raises(grpc.RpcError) as caught:
        admin.RevokeKey(apb.RevokeKeyRequest(tenant=b, key_id=id_a), metadata=md, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# -- admission ------------------------------------------------------------------------------


def test_fifty_concurrent_requests_against_a_budget_of_ten(mesh):
    name, key, _ = _tenant(mesh, budgets=[{"metric": "requests", "window": "day", "hard": 10}])
    _until_usable([mesh.edge_target], key)  # one request: 9 left
    stub = _gateway(mesh.edge_target)
    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(lambda _: _outcome(stub, key), range(50)))
    admitted = [o for o in outcomes if o is None]
    refused = [o for o in outcomes if o is not None]
    assert len(admitted) == 9, outcomes
    assert all(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for error in refused)
    status = _details(refused[0])
    kinds = {detail.type_url.rsplit("/", 1)[1] for detail in status.details}
    assert kinds == {"google.rpc.QuotaFailure", "google.rpc.RetryInfo"}
    failure = error_details_pb2.QuotaFailure()
    status.details[0].Unpack(failure)
    assert failure.violations[0].subject == f"tenant:{name}"
    assert dict(refused[0].trailing_metadata())["retry-after"].isdigit()
    # The refused cost nothing: the usage holds the admitted alone.
    rows = _usage(mesh, name)
    assert sum(r.requests for r in rows) == 9
    # HTTP/JSON: 429 with Retry-After, through Envoy.
    status_code, headers, body = _http(
        mesh, "POST", "/v1/generate", {"x-api-key": key}, {"query": "more?", "tier": "economy"}
    )
    assert status_code == 429, body
    assert int(headers["retry-after"]) >= 1
    assert body["details"][0]["@type"].endswith("google.rpc.QuotaFailure")


def _outcome(stub, key: str, **fields) -> grpc.RpcError | None:
    try:
        _ask(stub, key, **{"query": "How many?", **fields})
    except grpc.RpcError as exc:
        return exc
    return None


def test_a_token_budget_binds_on_the_request_that_would_cross_it(mesh):
    # Without retrieval a request's worst case is its question (bounded by its UTF-8 bytes)
    # plus max_tokens: tens of tokens. (With retrieval it is the tier's whole window.)
    cap = 1000
    name, key, _ = _tenant(mesh, budgets=[{"metric": "tokens", "window": "day", "hard": cap}])
    _until_usable([mesh.edge_target], key)
    stub = _gateway(mesh.edge_target)
    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(lambda _: _outcome(stub, key, skip_retrieval=True), range(100)))
    refused = [o for o in outcomes if o is not None]
    rows = _usage(mesh, name)
    spent = sum(r.input_tokens + r.output_tokens for r in rows)
    assert 0 < spent <= cap
    assert sum(r.requests for r in rows) == 100 - len(refused)  # a search records none
    # A hundred answers cost more than the cap (each is tens of tokens): some were refused.
    assert spent / sum(r.requests for r in rows) * 100 > cap
    assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    # One that could spend more than the whole cap is refused outright.
    error = _outcome(stub, key, query="Sources?", max_tokens=2000)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_cancelled_stream_pays_for_what_was_generated(mesh):
    name, key, _ = _tenant(mesh)
    _until_usable([mesh.edge_target], key)
    stub = _gateway(mesh.edge_target)
    request = pb.GenerateRequest(
        query="Write a long story about a lighthouse keeper.",
        max_tokens=200,
        skip_retrieval=True,
        tier="standard",
    )
    events = stub.GenerateStream(request, metadata=(("x-api-key", key),), timeout=120)
    tokens = 0
    for event in events:
        tokens += event.HasField("token")
        if tokens == 3:
            events.cancel()
            break
    rows = _usage(mesh, name)
    assert [r.requests for r in rows] == [1]
    assert 3 <= rows[0].output_tokens < 200  # what was generated, not max_tokens
    assert rows[0].input_tokens > 0


def test_a_per_key_rate_limit_refuses_what_is_over_it(mesh):
    _, key, _ = _tenant(mesh, requests_per_second=5)
    _until_usable([mesh.edge_target], key)
    time.sleep(1.0)
    stub = _gateway(mesh.edge_target)
    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(lambda _: _search(stub, key), range(20)))
    # Twenty at once, a cap of five a second: at most ten, if they straddle a second.
    ok = outcomes.count(grpc.StatusCode.OK)
    assert 1 <= ok <= 10, outcomes
    assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 20 - ok, outcomes


def _search(stub, key: str) -> grpc.StatusCode:
    try:
        stub.Search(pb.SearchRequest(query="rate"), metadata=(("x-api-key", key),), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_an_expired_key_is_refused(mesh):
    name, _, _ = _tenant(mesh)
    stub, md = _admin(mesh)
    expires = int(time.time() * 1000) + 2000
    created = stub.CreateKey(
        apb.CreateKeyRequest(tenant=name, expires_ms=expires), metadata=md, timeout=10
    )
    _until_usable([mesh.edge_target], created.key)
    time.sleep(max(expires / 1000 - time.time(), 0) + 0.1)
    assert _search(_gateway(mesh.edge_target), created.key) == grpc.StatusCode.UNAUTHENTICATED


# -- routing ---------------------------------------------------------------------------------


def test_batch_traffic_goes_to_its_tier_and_says_why(mesh, demo_key):
    stub = _gateway(mesh.edge_target)
    request = pb.GenerateRequest(query="Anything?", priority="batch", max_tokens=8)
    reply = stub.Generate(request, metadata=(("x-api-key", demo_key),), timeout=60)
    assert (reply.tier, reply.routing.reason) == ("economy", "criticality")
    status, _, body = _http(
        mesh,
        "POST",
        "/v1/generate",
        {"x-api-key": demo_key, "x-priority": "batch"},
        {"query": "Anything else?", "max_tokens": 8},
    )
    assert status == 200, body
    assert body["routing"]["tier"] == "economy"
    status, _, body = _http(
        mesh, "POST", "/v1/generate", {"x-api-key": demo_key}, {"query": "x", "priority": "low"}
    )
    assert status == 400 and "priority" in body["message"]


def test_past_the_soft_cap_standard_traffic_moves_to_the_cheaper_tier(mesh):
    budget = {"metric": "tokens", "window": "day", "soft": 1}
    name, key, _ = _tenant(mesh, budgets=[budget])
    _until_usable([mesh.edge_target], key)
    stub = _gateway(mesh.edge_target)
    _ask(stub, key, query="Spend a little.")  # economy, requested: past the soft cap now
    request = pb.GenerateRequest(query="And now?", max_tokens=8, skip_retrieval=True)
    reply = stub.Generate(request, metadata=(("x-api-key", key),), timeout=60)
    assert (reply.tier, reply.routing.reason) == ("economy", "soft_cap"), reply.routing
    admin, md = _admin(mesh)
    explained = admin.ExplainRoute(
        apb.ExplainRouteRequest(tenant=name, priority="critical"), metadata=md, timeout=10
    )
    assert explained.over_soft_cap
    assert (explained.tier, explained.reason) == ("standard", "criticality")  # never moved


def test_a_broken_policy_is_refused_and_the_old_one_stays(mesh, demo_key):
    path = Path(mesh.config.control.policy_file)
    good = path.read_text(encoding="utf-8")
    admin, md = _admin(mesh)
    explain = apb.ExplainRouteRequest(tenant="demo", priority="batch")
    try:
        path.write_text(good.replace("batch: economy", "batch: gold"), encoding="utf-8")
        deadline = time.monotonic() + 5
        while not (reply := admin.ExplainRoute(explain, metadata=md, timeout=10)).policy_error:
            assert time.monotonic() < deadline, "the broken policy was never read"
            time.sleep(0.2)
        assert "criticality.batch" in reply.policy_error and ":" in reply.policy_error
        assert reply.tier == "economy"  # the old policy still routes
    finally:
        path.write_text(good, encoding="utf-8")
    deadline = time.monotonic() + 5
    while admin.ExplainRoute(explain, metadata=md, timeout=10).policy_error:
        assert time.monotonic() < deadline
        time.sleep(0.2)


# -- two regions -----------------------------------------------------------------------------


def test_a_revoked_key_is_refused_in_both_regions_within_two_seconds(regions):
    name, key, key_id = _tenant(regions)
    targets = [r.gateway_target for r in regions.regions]
    _until_usable(targets, key)
    admin, md = _admin(regions)
    admin.RevokeKey(apb.RevokeKeyRequest(tenant=name, key_id=key_id), metadata=md, timeout=10)
    revoked = time.monotonic()
    for target in targets:
        while _search(_gateway(target), key) != grpc.StatusCode.UNAUTHENTICATED:
            assert time.monotonic() - revoked < 2.0, f"{target} still takes a revoked key"
            time.sleep(0.02)


def test_one_key_in_two_regions_never_exceeds_its_cap_even_with_the_store_killed(regions):
    cap = 60
    control = regions.config.control
    name, key, _ = _tenant(regions, budgets=[{"metric": "requests", "window": "day", "hard": cap}])
    targets = [r.gateway_target for r in regions.regions]
    _until_usable(targets, key)  # one request per region
    stubs = [_gateway(t) for t in targets]
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def load(count: int) -> None:
        with ThreadPoolExecutor(8) as pool:
            for code in pool.map(lambda i: _search(stubs[i % 2], key), range(count)):
                with lock:
                    codes.append(code)

    load(40)  # the store up: 40 + 2 of a cap of 60
    assert codes.count(grpc.StatusCode.OK) == 40
    regions.kill("redis")
    try:
        load(60)  # the store killed mid-run: the offline rule (allow) holds
    finally:
        regions.restart("redis")
    admitted = codes.count(grpc.StatusCode.OK) + 2
    lease = max(1, -(-cap * control.lease_fraction // 1))  # R is 1: one request
    offline = math.ceil(cap * control.offline_fraction)
    bound = cap + len(targets) * (lease + offline)  # docs/control-plane.md
    assert 42 < admitted <= bound, (admitted, bound)  # the offline rule admitted, within bound
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    # Back, the store learns what was spent while it was away: no admitted request is lost.
    store = redis.Redis(port=control.redis_port, decode_responses=True)
    counter = f"ragmesh:{{t:{name}}}:requests:day:{time.strftime('%Y%m%d', time.gmtime())}"
    deadline = time.monotonic() + 10
    while int(store.hget(counter, "spent") or 0) != admitted:
        assert time.monotonic() < deadline, (store.hgetall(counter), admitted)
        time.sleep(0.2)


# -- found by review: each a test ------------------------------------------------------------


def test_a_changed_budget_applies_at_once(mesh):
    name, key, _ = _tenant(mesh, budgets=[{"metric": "requests", "window": "day", "hard": 2}])
    _until_usable([mesh.edge_target], key)  # one of two
    stub = _gateway(mesh.edge_target)
    assert _search(stub, key) == grpc.StatusCode.OK
    assert _search(stub, key) == grpc.StatusCode.RESOURCE_EXHAUSTED
    admin, md = _admin(mesh)
    budget = apb.Budget(metric="requests", window="day", hard=1000)
    admin.UpdateTenant(apb.Tenant(name=name, budgets=[budget]), metadata=md, timeout=10)
    assert _search(stub, key) == grpc.StatusCode.OK  # the gateway that wrote it: at once


def test_a_body_cannot_name_another_tenant_than_the_path(mesh):
    a, _, _ = _tenant(mesh)
    b, _, key_b = _tenant(mesh)
    admin_key = {"x-admin-key": mesh.config.mesh.demo_admin_key}
    for path, body, field in (
        (f"/v1/admin/tenants/{a}/keys", {"tenant": b}, "tenant"),
        (f"/v1/admin/tenants/{a}/keys/{key_b}:revoke", {"tenant": b}, "tenant"),
        (f"/v1/admin/tenants/{a}", {"name": b, "requests_per_second": 7}, "name"),
    ):
        method = "PUT" if path.endswith(a) else "POST"
        status, _, reply = _http(mesh, method, path, admin_key, body)
        assert status == 400, (path, reply)
        assert field in reply["message"], reply
    stub, md = _admin(mesh)
    keys = stub.ListKeys(apb.ListKeysRequest(tenant=b), metadata=md, timeout=10).keys
    assert [k.revoked_ms for k in keys] == [0]  # nothing changed
    assert stub.GetTenant(apb.GetTenantRequest(name=b), metadata=md).requests_per_second == 0


def test_a_cached_answer_spends_no_tokens_and_a_unary_answer_is_recorded_ok(mesh):
    budget = {"metric": "tokens", "window": "day", "hard": 100000}
    name, key, _ = _tenant(mesh, budgets=[budget])
    _until_usable([mesh.edge_target], key)
    stub = _gateway(mesh.edge_target)
    question = {"query": "What is cached?", "bypass_cache": False}
    assert _ask(stub, key, **question).cache_status == pb.CACHE_STATUS_MISS
    assert _ask(stub, key, **question).cache_status == pb.CACHE_STATUS_HIT
    rows = _usage(mesh, name)
    assert sum(r.requests for r in rows) == 2
    store = redis.Redis(port=mesh.config.control.redis_port, decode_responses=True)
    day = time.strftime("%Y%m%d", time.gmtime())
    counter = f"ragmesh:{{t:{name}}}:tokens:day:{day}"
    entries = store.xrange(f"ragmesh:{{t:{name}}}:usage")
    records = [r for _, fields in entries for r in json.loads(fields["r"])]
    assert [r[11] for r in records] == ["ok", "ok"]  # UsageRecord.outcome
    miss = next(r for r in records if r[7] == "miss")
    time.sleep(mesh.config.control.lease_ttl_s / 3 + 1)  # a renewal reports what was spent
    assert int(store.hget(counter, "spent") or 0) == miss[4] + miss[5]  # the miss alone


def test_admin_mistakes_get_their_own_statuses(mesh):
    name, _, key_id = _tenant(mesh)
    stub, md = _admin(mesh)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateTenant(apb.Tenant(name=name), metadata=md, timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub.RevokeKey(apb.RevokeKeyRequest(tenant=name, key_id=key_id), metadata=md, timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RotateKey(apb.RotateKeyRequest(tenant=name, key_id=key_id), metadata=md, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "revoked" in caught.value.details()


def test_a_policy_tier_this_gateway_does_not_serve_is_a_server_error(mesh, demo_key):
    path = Path(mesh.config.control.policy_file)
    good = path.read_text(encoding="utf-8")
    admin, md = _admin(mesh)
    premium = "tiers:\n  premium:\n    input_per_1k: 0.01\n    output_per_1k: 0.03\n"
    broken = (
        good.replace("tiers:\n", premium, 1)
        .replace("critical: standard", "critical: premium")
        .replace("tiers: [standard, economy]", "tiers: [premium, standard, economy]")
    )
    explain = apb.ExplainRouteRequest(tenant="demo", priority="critical")
    try:
        path.write_text(broken, encoding="utf-8")
        deadline = time.monotonic() + 5
        while admin.ExplainRoute(explain, metadata=md, timeout=10).tier != "premium":
            assert time.monotonic() < deadline, "the policy was never reloaded"
            time.sleep(0.2)
        stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(mesh.regions[0].gateway_target))
        request = pb.GenerateRequest(query="x", priority="critical", max_tokens=4)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(request, metadata=(("x-api-key", demo_key),), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # another region may serve it
        assert "premium" in caught.value.details()
    finally:
        path.write_text(good, encoding="utf-8")
    deadline = time.monotonic() + 5
    while admin.ExplainRoute(explain, metadata=md, timeout=10).tier != "standard":
        assert time.monotonic() < deadline, "the good policy was never read back"
        time.sleep(0.2)


def test_a_bad_usage_read_costs_nothing_and_a_good_one_is_a_request(mesh):
    name, key, _ = _tenant(mesh, budgets=[{"metric": "requests", "window": "day", "hard": 3}])
    _until_usable([mesh.edge_target], key)  # one of three
    stub = _gateway(mesh.edge_target)
    metadata = (("x-api-key", key),)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetUsage(apb.GetUsageRequest(group_by="week"), metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "group_by" in caught.value.details()
    assert stub.GetUsage(apb.GetUsageRequest(), metadata=metadata, timeout=10).tenant == name
    assert _search(stub, key) == grpc.StatusCode.OK  # the third
    assert _search(stub, key) == grpc.StatusCode.RESOURCE_EXHAUSTED

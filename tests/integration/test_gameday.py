"""The game days, short form: load through Envoy while a region loses a part of itself.

`make gameday` runs the full form and prints the table; these assert the counts. They run
on the session's event loop, not asyncio.run's, which would leave the main thread without a
current loop for every test after them.
"""

from __future__ import annotations

import pytest

from loadtest.gameday import SHORT, GameDay, Outcome, table

pytestmark = [pytest.mark.integration, pytest.mark.gameday]


@pytest.fixture(scope="module")
async def day(regions) -> GameDay:
    day = GameDay(regions, SHORT)
    await day.seed()
    return day


async def _play(day: GameDay, name: str) -> Outcome:
    outcome = await day.play(name)
    print(table([outcome]))
    assert outcome.phase("before") and outcome.phase("during") and outcome.phase("after")
    return outcome


async def test_killing_a_gateway_fails_no_request_and_traffic_returns(day):
    outcome = await _play(day, "gateway-kill")
    assert outcome.failed == 0
    assert outcome.returned_after_s is not None and outcome.returned_after_s <= 15.0
    during = outcome.phase("during")
    failed_over = [s for s in during if s.region == day.mesh.regions[1].name]
    assert len(failed_over) > len(during) / 2


async def test_killing_retrieval_fails_no_request(day):
    assert (await _play(day, "retrieval-kill")).failed == 0


async def test_killing_triton_fails_no_request(day):
    assert (await _play(day, "triton-kill")).failed == 0


async def test_slow_retrieval_degrades_within_the_budget(day):
    outcome = await _play(day, "retrieval-slow")
    assert outcome.failed == 0
    during = outcome.phase("during")
    # For corpus_version_fresh_s after the fault an exact hit is served before retrieval is
    # asked (the version seen last is fresh): not degraded. Then every answer says it is.
    fresh = day.mesh.config.gateway.corpus_version_fresh_s
    late = [s for s in during if s.at_s >= outcome.fault_at_s + fresh]
    assert late and all(s.degraded for s in late)
    budget = day.mesh.config.gateway.request_timeout_s
    assert max(s.latency_s for s in during) < budget


async def test_kill_9_during_an_ingest_loses_no_acknowledged_document(day):
    outcome = await _play(day, "ingest-kill")
    assert len(outcome.acknowledged) == SHORT.documents
    assert outcome.missing == {r.name: 0 for r in day.mesh.regions}
    assert outcome.failed == 0


async def test_killing_the_store_fails_no_request_and_loses_no_count(day):
    outcome = await _play(day, "store-kill")
    assert outcome.failed == 0
    assert outcome.store_caught_up


async def test_streams_whose_triton_dies_under_load_all_end_whole_and_are_counted(day):
    outcome = await _play(day, "stream-kill")
    assert outcome.failed == 0
    assert outcome.continuations  # at least the stream that was mid-answer
    assert outcome.counted == len(outcome.continuations)
    other = day.mesh.regions[1].config.triton.grpc_port
    assert all(c.endpoint.endswith(f":{other}") for c in outcome.continuations)


async def test_streams_whose_triton_freezes_under_load_go_on_after_the_stall_budget(day):
    outcome = await _play(day, "stream-stall")
    assert outcome.failed == 0
    budget = day.mesh.config.gateway.tiers["standard"].inter_token_timeout_s
    assert outcome.continuations
    assert all(c.reason == f"stalled: no token for {budget:g} s" for c in outcome.continuations)
    assert outcome.counted == len(outcome.continuations)


async def test_a_tenant_past_its_budget_caps_is_moved_then_refused_and_no_other_fails(day):
    outcome = await _play(day, "budget-exhaustion")
    assert outcome.failed == 0  # the demo tenant's load, throughout
    capped = outcome.capped
    assert capped is not None and capped.problems() == []
    assert len(capped.admitted) == capped.hard == capped.spent
    assert capped.refused and all(s.status == "RESOURCE_EXHAUSTED" for s in capped.refused)
    assert capped.crossings >= 1  # RagmeshTenantBudgetSoftCap's expression would fire


async def test_a_poisoned_log_entry_is_rejected_at_recovery_and_writes_go_on(day):
    outcome = await _play(day, "poisoned-write")
    assert outcome.failed == 0
    assert outcome.rejected == 1  # RagmeshRejectedWrites' expression would fire
    assert outcome.written_after and len(outcome.acknowledged) == 1
    assert outcome.missing == {r.name: 0 for r in day.mesh.regions}

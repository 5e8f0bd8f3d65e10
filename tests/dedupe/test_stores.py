"""The dedupe store protocol, on every store (in-memory, Redis, PostgreSQL)."""

from __future__ import annotations

import anyio
import pytest

from asyncjobs.dedupe import DedupeStore

pytestmark = pytest.mark.anyio
LEASE, TTL = 30.0, 60.0


async def test_first_claim_wins_and_another_owner_sees_it_running(store: DedupeStore) -> None:
    first = await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL, job_id="j1")
    second = await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL, job_id="j2")
    assert first.status == "claimed"
    assert second.status == "running"
    assert second.lease_until is not None
    assert first.lease_until is not None
    assert abs(second.lease_until - first.lease_until) < 0.01


async def test_concurrent_claims_have_exactly_one_winner(store: DedupeStore) -> None:
    results: list[str] = []

    async def claim(owner: str) -> None:
        claim = await store.claim("race", owner, lease_seconds=LEASE, ttl=TTL)
        results.append(claim.status)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(claim, f"owner{i}")
    assert sorted(results) == ["claimed"] + ["running"] * 19


async def test_the_same_owner_may_claim_again(store: DedupeStore) -> None:
    await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL)
    again = await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL)
    assert again.status == "claimed"


async def test_a_done_key_is_reported_done_to_every_later_claim(store: DedupeStore) -> None:
    await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL, job_id="j1")
    assert await store.complete("k", "a", TTL)
    assert await store.complete("k", "a", TTL)  # idempotent
    later = await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL, job_id="j1")
    assert later.status == "done"
    assert later.record is not None
    assert later.record.owner == "a"
    record = await store.get("k")
    assert record is not None
    assert record.status == "done"
    assert record.lease_until is None


async def test_a_released_claim_lets_the_next_attempt_run(store: DedupeStore) -> None:
    await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL, attempt=1)
    assert await store.release("k", "a", TTL, error="ConnectionError: down")
    retry = await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL, attempt=2)
    assert retry.status == "claimed"
    record = await store.get("k")
    assert record is not None
    assert (record.status, record.owner, record.attempt) == ("running", "b", 2)
    events = [(e["event"], e.get("owner")) for e in record.history]
    assert events == [("claimed", "a"), ("retrying", "a"), ("claimed", "b")]
    assert record.history[1]["error"] == "ConnectionError: down"


async def test_an_expired_claim_is_taken_over_and_its_old_owner_cannot_settle_it(store: DedupeStore) -> None:
    await store.claim("k", "a", lease_seconds=0.2, ttl=TTL)
    await anyio.sleep(0.3)
    taken = await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL)
    assert taken.status == "claimed"
    assert not await store.complete("k", "a", TTL)
    assert not await store.release("k", "a", TTL)
    assert not await store.extend("k", "a", LEASE)
    record = await store.get("k")
    assert record is not None
    assert (record.status, record.owner) == ("running", "b")


async def test_extend_keeps_a_claim_past_its_first_lease(store: DedupeStore) -> None:
    await store.claim("k", "a", lease_seconds=0.3, ttl=TTL)
    await anyio.sleep(0.15)
    assert await store.extend("k", "a", 0.5)
    await anyio.sleep(0.25)
    assert (await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL)).status == "running"


async def test_records_expire_after_their_ttl(store: DedupeStore) -> None:
    await store.claim("k", "a", lease_seconds=0.2, ttl=0.3)
    assert await store.complete("k", "a", 0.3)
    assert await store.get("k") is not None
    await anyio.sleep(0.45)
    assert await store.get("k") is None
    assert (await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL)).status == "claimed"


async def test_enqueue_claim_blocks_while_pending_running_or_done_and_not_after_dead(store: DedupeStore) -> None:
    assert await store.claim_enqueue("k", TTL)
    assert not await store.claim_enqueue("k", TTL)  # pending
    assert (await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL)).status == "claimed"  # pending is claimable
    assert not await store.claim_enqueue("k", TTL)  # running
    assert await store.release("k", "a", TTL, status="dead", error="permanent")
    assert await store.claim_enqueue("k", TTL)  # a dead job may be enqueued again
    assert (await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL)).status == "claimed"
    assert await store.complete("k", "b", TTL)
    assert not await store.claim_enqueue("k", TTL)  # done
    record = await store.get("k")
    assert record is not None
    assert [e["event"] for e in record.history] == ["enqueued", "claimed", "dead", "enqueued", "claimed", "done"]


async def test_delete_forgets_a_key(store: DedupeStore) -> None:
    await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL)
    assert await store.complete("k", "a", TTL)
    assert await store.delete("k")
    assert not await store.delete("k")
    assert await store.get("k") is None
    assert (await store.claim("k", "b", lease_seconds=LEASE, ttl=TTL)).status == "claimed"


async def test_record_keeps_job_id_timestamps_and_owner(store: DedupeStore) -> None:
    claim = await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL, job_id="job-1", attempt=3)
    record = await store.get("k")
    assert record is not None
    assert (record.key, record.job_id, record.attempt, record.owner) == ("k", "job-1", 3, "a")
    assert record.created_at <= record.updated_at
    assert record.lease_until == pytest.approx(claim.lease_until, abs=0.01)
    assert record.expires_at >= record.updated_at + TTL - 1
    assert record.to_json()["history"][0]["event"] == "claimed"


async def test_release_enqueue_forgets_only_a_pending_record(store: DedupeStore) -> None:
    assert await store.claim_enqueue("k", TTL)
    await store.release_enqueue("k")
    assert await store.get("k") is None
    assert await store.claim_enqueue("k", TTL)
    await store.claim("k", "a", lease_seconds=LEASE, ttl=TTL)
    await store.release_enqueue("k")
    record = await store.get("k")
    assert record is not None
    assert record.status == "running"


async def test_extend_many_extends_the_claims_still_held_in_one_call(store: DedupeStore) -> None:
    from asyncjobs.dedupe.store import extend_claims

    await store.claim("k1", "a", lease_seconds=0.3, ttl=TTL)
    await store.claim("k2", "a", lease_seconds=0.3, ttl=TTL)
    await store.claim("k3", "b", lease_seconds=0.3, ttl=TTL)
    assert await store.release("k3", "b", TTL)
    assert hasattr(store, "extend_many"), "every built-in store batches its extensions"
    result = await extend_claims(store, [("k1", "a"), ("k2", "a"), ("k3", "b"), ("k2", "x"), ("none", "a")], LEASE)
    assert result == [True, True, False, False, False]
    await anyio.sleep(0.5)
    assert (await store.claim("k1", "c", lease_seconds=LEASE, ttl=TTL)).status == "running", "still held by a"
    assert await extend_claims(store, [], LEASE) == []

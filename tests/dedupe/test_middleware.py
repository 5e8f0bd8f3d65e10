"""Execution-time dedupe in a running worker (DESIGN.md "Dedupe"), on the in-memory broker."""

from __future__ import annotations

import uuid

import anyio
import pytest

from asyncjobs import App, PermanentError
from asyncjobs.broker import OutgoingJob
from asyncjobs.dedupe import DedupeRecord, DedupeStore, MemoryDedupeStore, key_for
from asyncjobs.memory import MemoryBroker
from asyncjobs.retrying import Backoff
from asyncjobs.task import CallOptions, Task
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio
QUICK = Backoff(base=0.01, cap=0.05)


def dedupe_app(store: DedupeStore | None = None, **options: object) -> App:
    """An app on a fresh in-memory broker with a dedupe store."""
    return App(MemoryBroker(f"memory://{uuid.uuid4().hex}"), dedupe=store or MemoryDedupeStore(), **options)  # type: ignore[arg-type]


async def push_raw(app: App, task: Task[..., object], key: str, *args: object) -> str:
    """Enqueue a job with ``key`` straight to the broker, bypassing enqueue-time dedupe (a duplicate)."""
    env = app.build(task.spec, CallOptions(key=key), args, {})
    [ok] = await app.broker.enqueue([OutgoingJob(env.id, env.queue, env.encode())])
    assert ok
    return env.id


async def record_of(app: App, key: str) -> DedupeRecord:
    assert app.dedupe is not None
    record = await app.dedupe.get(key)
    assert record is not None
    return record


async def test_duplicate_of_a_done_job_acks_without_running_and_is_counted() -> None:
    app = dedupe_app()
    charges: list[int] = []

    @app.task(name="charge")
    async def charge(amount: int) -> None:
        charges.append(amount)

    await push_raw(app, charge, "invoice-1", 10)
    async with running(app, concurrency=1) as worker:
        await eventually(lambda: worker.stats.done == 1)
        await push_raw(app, charge, "invoice-1", 10)
        await eventually(lambda: worker.stats.skipped == 1)
    assert charges == [10]
    assert (await app.broker.stats("default")).ready == 0, "the duplicate was acked"
    record = await record_of(app, "invoice-1")
    assert record.status == "done"
    assert [e["event"] for e in record.history] == ["claimed", "done"]


async def test_duplicate_of_a_running_job_waits_for_it_then_is_skipped() -> None:
    app = dedupe_app()
    runs: list[str] = []
    release = anyio.Event()

    @app.task(name="slow", timeout=5)
    async def slow() -> None:
        runs.append("run")
        await release.wait()

    await push_raw(app, slow, "once")
    async with running(app, concurrency=2) as worker:
        await eventually(lambda: runs == ["run"])
        await push_raw(app, slow, "once")
        await eventually(lambda: worker.stats.deferred >= 1)
        assert worker.stats.skipped == 0
        release.set()
        await eventually(lambda: worker.stats.done == 1 and worker.stats.skipped == 1, within=10)
    assert runs == ["run"]


async def test_a_failed_attempt_releases_the_key_so_its_retry_runs() -> None:
    app = dedupe_app()
    attempts: list[int] = []

    @app.task(name="flaky", backoff=QUICK)
    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("down")

    await flaky.options(key="flaky-1").enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert len(attempts) == 2
    record = await record_of(app, "flaky-1")
    assert record.status == "done"
    assert record.attempt == 2
    assert [e["event"] for e in record.history] == ["claimed", "retrying", "claimed", "done"]
    assert record.history[1]["error"] == "ConnectionError: down"


async def test_a_dead_lettered_job_marks_its_key_dead_and_may_be_enqueued_again() -> None:
    app = dedupe_app()

    @app.task(name="doomed")
    async def doomed() -> None:
        raise PermanentError("no such account")

    await doomed.options(key="acct-9").enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    assert (await record_of(app, "acct-9")).status == "dead"
    assert app.dedupe is not None
    assert await app.dedupe.claim_enqueue("acct-9", 60)


async def test_job_redelivered_after_its_worker_died_post_completion_is_skipped() -> None:
    app = dedupe_app()
    runs: list[int] = []

    @app.task(name="bill")
    async def bill() -> None:
        runs.append(1)

    job_id = await push_raw(app, bill, "bill-7")
    ghost = await app.broker.consumer(["default"], prefetch=1, lease_seconds=0.3)
    [taken] = await ghost.fetch(1, 1.0)
    assert app.dedupe is not None
    # the dead worker had claimed the key, run the job and recorded it done, then died before its ack
    assert (await app.dedupe.claim("bill-7", "ghost", lease_seconds=10, ttl=60, job_id=job_id)).status == "claimed"
    assert await app.dedupe.complete("bill-7", "ghost", 60)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.skipped == 1)
    assert runs == []
    assert taken.job_id == job_id


async def test_a_claim_left_by_a_crashed_worker_defers_the_redelivery_until_it_ends() -> None:
    app = dedupe_app()
    runs: list[int] = []

    @app.task(name="bill")
    async def bill() -> None:
        runs.append(1)

    job_id = await push_raw(app, bill, "bill-8")
    assert app.dedupe is not None
    # a worker died while running it: its claim holds for another 0.6 s
    await app.dedupe.claim("bill-8", "crashed", lease_seconds=0.6, ttl=60, job_id=job_id)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.deferred >= 1)
        assert runs == []
        await eventually(lambda: worker.stats.done == 1, within=5)
    assert runs == [1]
    record = await record_of(app, "bill-8")
    assert [e["event"] for e in record.history] == ["claimed", "claimed", "done"]


async def test_a_job_without_key_never_touches_the_store() -> None:
    store = MemoryDedupeStore()
    app = dedupe_app(store)

    @app.task(name="plain")
    async def plain() -> None:
        pass

    await plain.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert store._records == {}


async def test_the_handler_sees_its_claim() -> None:
    from asyncjobs.dedupe import current_claim

    app = dedupe_app()
    seen: list[tuple[str, str]] = []

    @app.task(name="peek")
    async def peek() -> None:
        claim = current_claim()
        assert claim is not None
        seen.append((claim.key, claim.owner))

    await peek.options(key="peek-1").enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    [(key, owner)] = seen
    assert key == "peek-1"
    assert (await record_of(app, "peek-1")).owner == owner


class _DownStore(MemoryDedupeStore):
    async def claim(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise ConnectionError("store unreachable")


async def test_an_unreachable_store_defers_the_job_instead_of_running_or_losing_it() -> None:
    app = dedupe_app(_DownStore())
    runs: list[int] = []

    @app.task(name="guarded")
    async def guarded() -> None:
        runs.append(1)

    await guarded.options(key="g-1").enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.deferred >= 1)
    assert runs == []
    stats = await app.broker.stats("default")
    assert stats.scheduled + stats.ready == 1, "the job is still in the broker"


class _NoUniqueBroker(MemoryBroker):
    supports_unique = False


async def test_enqueue_guard_refuses_a_second_job_with_the_same_key_on_a_broker_without_unique() -> None:
    store = MemoryDedupeStore()
    app = App(_NoUniqueBroker(f"memory://{uuid.uuid4().hex}"), dedupe=store)

    @app.task(name="welcome")
    async def welcome(user: int) -> None:
        pass

    first = await welcome.options(key="welcome-1").enqueue(1)
    second = await welcome.options(key="welcome-1").enqueue(1)
    assert (first.accepted, second.accepted) == (True, False)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    third = await welcome.options(key="welcome-1").enqueue(1)
    assert not third.accepted, "a done key blocks enqueues for its TTL"
    assert (await app.broker.stats("default")).ready == 0


async def test_deterministic_keys_make_the_same_call_a_duplicate() -> None:
    app = dedupe_app(deterministic_keys=True)

    @app.task(name="report")
    async def report(day: str, *, region: str = "eu") -> None:
        pass

    a = await report.enqueue("2026-01-01", region="us")
    b = await report.enqueue("2026-01-01", region="us")
    c = await report.enqueue("2026-01-02", region="us")
    assert (a.accepted, b.accepted, c.accepted) == (True, False, True)
    assert key_for("report", ["2026-01-01"], {"region": "us"}) == key_for("report", ("2026-01-01",), {"region": "us"})
    assert key_for("report", ["x"]) != key_for("other", ["x"])


class _RefusingBroker(_NoUniqueBroker):
    async def enqueue(self, jobs: object) -> list[bool]:  # type: ignore[override]
        from asyncjobs import BrokerError

        raise BrokerError("publish not confirmed")


async def test_a_job_the_broker_refused_gives_its_key_back_so_the_enqueue_can_be_retried() -> None:
    from asyncjobs import BrokerError

    store = MemoryDedupeStore()
    app = App(_RefusingBroker(f"memory://{uuid.uuid4().hex}"), dedupe=store)

    @app.task(name="send")
    async def send() -> None:
        pass

    with pytest.raises(BrokerError):
        await send.options(key="send-1").enqueue()
    assert await store.get("send-1") is None
    assert await store.claim_enqueue("send-1", 60), "a retried enqueue may claim the key"


async def test_a_claim_lasts_as_long_as_the_lease_and_is_extended_with_the_heartbeat() -> None:
    """A crashed worker's claim ends with its lease (not timeout + grace), so the redelivery runs at once."""
    from asyncjobs.clock import wall_time

    app = dedupe_app()
    seen: list[float] = []

    @app.task(name="keyed", timeout=60)
    async def keyed() -> None:
        for _ in range(4):
            record = await record_of(app, "k-lease")
            assert record.lease_until is not None
            seen.append(record.lease_until - wall_time())
            await anyio.sleep(0.4)

    await keyed.options(key="k-lease").enqueue()
    async with running(app, lease_seconds=1.0, heartbeat_seconds=0.25) as worker:
        await eventually(lambda: worker.stats.done == 1, within=10)
    assert len(seen) == 4
    assert max(seen) <= 1.05, f"claimed for the lease (1 s), not the 60 s timeout plus grace: {seen}"
    assert min(seen) > 0.3, f"kept extended while the job ran 1.6 s: {seen}"
    assert (await record_of(app, "k-lease")).status == "done"


async def test_a_dedupe_layer_placed_by_hand_also_ties_its_claims_to_the_workers_lease() -> None:
    """``App(middleware=[DedupeMiddleware(store, ...)])`` (docs/dedupe.md) claims for the lease, like ``App(dedupe=)``."""
    from asyncjobs.clock import wall_time
    from asyncjobs.middleware.dedupe import DedupeMiddleware

    store = MemoryDedupeStore()
    app = App(
        MemoryBroker(f"memory://{uuid.uuid4().hex}"),
        middleware=[DedupeMiddleware(store, grace_seconds=1.0, max_defer_seconds=0.5)],
    )
    seen: list[float] = []

    @app.task(name="keyed", timeout=60)
    async def keyed() -> None:
        for _ in range(4):
            record = await store.get("k-hand")
            assert record is not None and record.lease_until is not None
            seen.append(record.lease_until - wall_time())
            await anyio.sleep(0.4)

    await keyed.options(key="k-hand").enqueue()
    async with running(app, lease_seconds=1.0, heartbeat_seconds=0.25) as worker:
        await eventually(lambda: worker.stats.done == 1, within=10)
    assert len(seen) == 4
    assert max(seen) <= 1.05, f"claimed for the lease (1 s), not the 60 s timeout plus grace: {seen}"
    assert min(seen) > 0.3, f"kept extended while the job ran 1.6 s: {seen}"


def test_a_dedupe_layer_with_its_own_lease_and_heartbeat_keeps_them() -> None:
    from asyncjobs.middleware.dedupe import DedupeMiddleware

    own = DedupeMiddleware(MemoryDedupeStore(), lease_seconds=600, heartbeat_seconds=0)
    assert own.for_worker(2.0, 0.5) is own
    given_lease = DedupeMiddleware(MemoryDedupeStore(), lease_seconds=600).for_worker(2.0, 0.5)
    assert (given_lease.lease_seconds, given_lease.heartbeat_seconds) == (600, 0.5)


async def test_the_claims_of_running_jobs_are_extended_together_once_per_heartbeat() -> None:
    """One store call per heartbeat for every claim a worker holds, not one per job."""

    class Counting(MemoryDedupeStore):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[int] = []
            self.singles = 0

        async def extend(self, key: str, owner: str, lease_seconds: float) -> bool:
            self.singles += 1
            return await super().extend(key, owner, lease_seconds)

        async def extend_many(self, claims, lease_seconds):  # type: ignore[no-untyped-def]
            self.batches.append(len(claims))
            return [await MemoryDedupeStore.extend(self, k, o, lease_seconds) for k, o in claims]

    store = Counting()
    app = dedupe_app(store)

    @app.task(name="slow")
    async def slow(i: int) -> None:
        await anyio.sleep(1.2)

    for i in range(10):
        await slow.options(key=f"slow-{i}").enqueue(i)
    async with running(app, lease_seconds=1.0, heartbeat_seconds=0.25, concurrency=10) as worker:
        await eventually(lambda: worker.stats.done == 10, within=10)
    assert store.singles == 0
    assert store.batches and max(store.batches) == 10, store.batches
    assert len(store.batches) <= 8, f"about one call per heartbeat over 1.2 s: {store.batches}"
    for i in range(10):
        assert (await record_of(app, f"slow-{i}")).status == "done"


async def test_a_store_without_extend_many_has_its_claims_extended_one_by_one() -> None:
    """Third-party stores need only ``extend``: ``extend_claims`` falls back to it."""
    from asyncjobs.dedupe.store import extend_claims

    class OnlyExtend:
        def __init__(self, inner: MemoryDedupeStore) -> None:
            self.inner, self.calls = inner, 0

        async def extend(self, key: str, owner: str, lease_seconds: float) -> bool:
            self.calls += 1
            return await self.inner.extend(key, owner, lease_seconds)

    inner = MemoryDedupeStore()
    await inner.claim("a", "me", lease_seconds=30, ttl=60)
    store = OnlyExtend(inner)
    assert await extend_claims(store, [("a", "me"), ("b", "me")], 30) == [True, False]  # type: ignore[arg-type]
    assert store.calls == 2

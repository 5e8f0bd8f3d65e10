"""Cancellation through job handles: a queued or scheduled job does not run, a running one stops."""

from __future__ import annotations

import anyio
import pytest

from asyncjobs import App, JobCancelledError
from tests.runtime.helpers import running

pytestmark = pytest.mark.anyio

FAST = {"heartbeat_seconds": 0.2, "lease_seconds": 5.0, "fetch_wait_seconds": 0.2}


async def wait_for(condition: object, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.mark.parametrize("keep", [60.0, 0.0])
async def test_a_queued_job_that_was_cancelled_is_not_run(app: App, keep: float) -> None:
    ran: list[int] = []

    @app.task(keep_result=keep)
    async def work(n: int) -> int:
        ran.append(n)
        return n

    cancelled, kept = await work.enqueue(1), await work.enqueue(2)
    assert (await cancelled.cancel()).state == "cancelled"
    async with running(app, **FAST) as worker:
        await wait_for(lambda: worker.stats.cancelled + worker.stats.done == 2)
    assert ran == [2]
    assert worker.stats.cancelled == 1
    assert worker.stats.dead == 0 and worker.stats.retried == 0
    status = await cancelled.status()
    assert status.state == "cancelled"
    assert status.finished
    with pytest.raises(JobCancelledError):
        await cancelled.result(timeout=1)
    assert await app.broker.list_dead("default") == []
    if keep:
        assert await kept.result(timeout=5) == 2


async def test_a_scheduled_job_that_was_cancelled_is_not_run(app: App) -> None:
    ran: list[str] = []

    @app.task(keep_result=60)
    async def later() -> str:
        ran.append("ran")
        return "ran"

    ref = await later.options(delay=1.0).enqueue()
    assert (await ref.status()).state == "scheduled"
    await ref.cancel()
    async with running(app, **FAST) as worker:
        await wait_for(lambda: worker.stats.cancelled == 1)
    assert ran == []
    assert (await ref.status()).state == "cancelled"


@pytest.mark.parametrize("keep", [60.0, 0.0])
async def test_a_running_job_is_cancelled_within_a_heartbeat_and_not_retried(app: App, keep: float) -> None:
    started = anyio.Event()
    stopped: list[str] = []

    @app.task(keep_result=keep, timeout=None)
    async def forever() -> int:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            stopped.append("stopped")
        return 1

    ref = await forever.enqueue()
    async with running(app, **FAST) as worker:
        with anyio.fail_after(10):
            await started.wait()
        asked = anyio.current_time()
        status = await ref.cancel()
        assert status.cancel_requested or status.state == "running" or keep == 0
        await wait_for(lambda: worker.stats.cancelled == 1)
        took = anyio.current_time() - asked
    assert stopped == ["stopped"]
    assert took < 3.0, f"cancelled {took:.2f}s after the ask: about a heartbeat (0.2 s), with room for a loaded machine"
    assert worker.stats.retried == 0 and worker.stats.dead == 0 and worker.stats.released == 0
    final = await ref.status()
    assert final.state == "cancelled"
    assert final.reason == "cancelled"
    assert await app.broker.list_dead("default") == []
    stats = await app.broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.in_flight) == (0, 0, 0)


async def test_cancelling_a_finished_job_changes_nothing(app: App) -> None:
    @app.task(keep_result=60)
    async def quick() -> int:
        return 7

    ref = await quick.enqueue()
    async with running(app, **FAST):
        assert await ref.result(timeout=10) == 7
    assert (await ref.cancel()).state == "done"
    assert await ref.result(timeout=1) == 7


async def test_cancelled_jobs_are_counted_in_the_metrics() -> None:
    import uuid

    from asyncjobs.memory import MemoryBroker
    from asyncjobs.metrics_server import serve_metrics
    from tests.observability.test_metrics import free_port, scrape, value

    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))
    name = f"cancelled_{uuid.uuid4().hex[:8]}"  # counters are per process: a task name of this test only

    @app.task(name=name)
    async def work() -> None:
        pass

    for ref in [await work.enqueue() for _ in range(3)][:2]:
        await ref.cancel()
    port = free_port()
    async with serve_metrics(port, app.broker, ["default"], poll_seconds=0.1), running(app, **FAST) as worker:
        await wait_for(lambda: worker.stats.cancelled == 2 and worker.stats.done == 1)
        samples = await anyio.to_thread.run_sync(scrape, port)
    assert value(samples, "asyncjobs_job_cancelled_total", task=name) == 2


async def test_with_marks_listed_by_the_heartbeat_jobs_are_checked_without_a_store_call(app: App) -> None:
    store = app.results
    assert store is not None
    asked: list[str] = []
    cancelled = store.cancelled

    async def counted(job_id: str) -> bool:
        asked.append(job_id)
        return await cancelled(job_id)

    store.cancelled = counted  # type: ignore[method-assign]
    ran: list[int] = []

    @app.task(keep_result=0)
    async def work(n: int) -> None:
        ran.append(n)

    await store.cancel("a-job-scheduled-for-next-week")  # a live mark: checks stay on
    async with running(app, **FAST) as worker:
        await anyio.sleep(0.5)  # a few heartbeats: the worker knows every mark
        refs = [await work.enqueue(n) for n in range(20)]
        await refs[7].cancel()
        await anyio.sleep(0.5)
        await wait_for(lambda: worker.stats.done + worker.stats.cancelled == 20)
    assert sorted(ran) == [n for n in range(20) if n != 7] or (7 in ran and worker.stats.cancelled == 0)
    if not store.local:
        assert asked == []  # checked against the marks the heartbeat brought, no round trip per job


async def test_a_result_store_that_cannot_be_reached_does_not_fail_the_jobs_it_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cancel check before a job starts is the store's to answer; an unreachable store burns no attempt."""
    pytest.importorskip("redis")
    from asyncjobs.results.redis import RedisResultStore
    from tests.servers import free_port

    store = RedisResultStore.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    app = App("memory://", results=store)
    ran: list[int] = []

    @app.task(max_attempts=1, keep_result=0)
    async def once(n: int) -> None:
        ran.append(n)

    for n in range(5):
        await once.enqueue(n)
    async with running(app, **FAST) as worker:
        await wait_for(lambda: worker.stats.done + worker.stats.dead >= 5)
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert (worker.stats.done, worker.stats.dead) == (5, 0), "none dead-lettered for the store's fault"
    assert any("could not be asked for its cancel mark" in r.getMessage() for r in caplog.records)

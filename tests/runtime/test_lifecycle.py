"""Every way out of an attempt is settled and counted once, and a worker always stops: on every broker.

Each test runs a real worker in this process against each broker harness (memory://, and the
real Redis and RabbitMQ servers) and counts what happened to every job.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import anyio
import pytest

from asyncjobs import App, Broker, CallNext, Job, Outcome, Worker, WorkerConfig
from asyncjobs.retrying import Backoff
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio
QUICK = Backoff(base=0.01, cap=0.05, jitter=0.0)


async def settled(broker: Broker, queue: str = "default") -> tuple[int, int, int, int]:
    """``(ready, scheduled, in_flight, dead)`` of ``queue``."""
    stats = await broker.stats(queue)
    return stats.ready, stats.scheduled, stats.in_flight, stats.dead


async def test_a_stray_cancellation_is_an_error_of_that_job_and_the_worker_goes_on(broker: Broker) -> None:
    app = App(broker)
    runs: Counter[str] = Counter()

    @app.task(name="stray", max_attempts=3, backoff=QUICK)
    async def stray() -> None:
        runs["stray"] += 1
        other = asyncio.ensure_future(asyncio.sleep(30))
        await asyncio.sleep(0)
        other.cancel()
        await other  # raises CancelledError in this handler, though nobody cancelled the handler

    @app.task(name="steady")
    async def steady() -> None:
        await anyio.sleep(0.3)
        runs["steady"] += 1

    await stray.enqueue()
    await steady.enqueue()
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 1 and worker.stats.done == 1, within=20)
        assert not worker.stopping
        await steady.enqueue()
        await eventually(lambda: worker.stats.done == 2, within=10)  # still working
    assert runs == {"stray": 3, "steady": 2}, "retried up to max_attempts, then dead-lettered; the rest unharmed"
    assert worker.stats.retried == 2
    [dead] = await broker.list_dead("default")
    assert "CancelledError" in dead.info.error_message
    assert await settled(broker) == (0, 0, 0, 1)


class Exploding:
    """A middleware with a bug: it raises after the handler ran."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        outcome = await call_next(job)
        if job.task == "victim":
            raise self.error
        return outcome


class Forgetful:
    """A middleware that forgets its ``return``."""

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        await call_next(job)
        return None  # type: ignore[return-value]


class Boom(BaseException):
    """Not an Exception: slips past ``except Exception``."""


@pytest.mark.parametrize("error", [RuntimeError("middleware bug"), Boom("base exception")], ids=["exception", "base"])
async def test_an_exception_escaping_middleware_is_counted_and_ends_in_the_dead_letters(
    broker: Broker, error: BaseException
) -> None:
    app = App(broker, middleware=[Exploding(error)])
    runs: Counter[str] = Counter()

    @app.task(name="victim", max_attempts=3, backoff=QUICK)
    async def victim() -> None:
        runs["victim"] += 1

    @app.task(name="bystander")
    async def bystander(i: int) -> None:
        runs[f"bystander{i}"] += 1

    await victim.enqueue()
    for i in range(5):
        await bystander.enqueue(i)
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 1 and worker.stats.done == 5, within=20)
        assert not worker.stopping
    assert runs["victim"] == 3
    assert all(runs[f"bystander{i}"] == 1 for i in range(5)), "a job beside the poison pill ran once"
    assert await settled(broker) == (0, 0, 0, 1)


async def test_a_handler_raising_a_base_exception_is_retried_then_dead_lettered(broker: Broker) -> None:
    app = App(broker)
    runs: list[int] = []

    @app.task(name="exits", max_attempts=2, backoff=QUICK)
    async def exits() -> None:
        runs.append(1)
        raise Boom("handler")

    await exits.enqueue()
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 1, within=20)
    assert len(runs) == 2
    [dead] = await broker.list_dead("default")
    assert dead.info.reason == "max_attempts"


async def test_a_middleware_returning_none_dead_letters_the_job_once_instead_of_looping(broker: Broker) -> None:
    app = App(broker, middleware=[Forgetful()])
    runs: list[int] = []

    @app.task(name="once", max_attempts=3)
    async def once() -> None:
        runs.append(1)

    await once.enqueue()
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 1, within=10)
        await anyio.sleep(0.3)
    assert runs == [1]
    [dead] = await broker.list_dead("default")
    assert dead.info.reason == "bad_outcome"
    assert "Forgetful returned None" in dead.info.error_message


async def test_work_finished_in_a_shielded_section_past_the_timeout_is_not_done_again(broker: Broker) -> None:
    app = App(broker)
    charges: list[int] = []

    @app.task(name="charge", timeout=0.2, max_attempts=3, backoff=QUICK)
    async def charge() -> str:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.5)  # the deadline passes here
            charges.append(1)
        return "charged"  # no checkpoint after the section: the work is done and the handler returns

    await charge.enqueue()
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.done == 1, within=10)
        await anyio.sleep(0.3)
    assert charges == [1]
    assert (worker.stats.retried, worker.stats.dead) == (0, 0)


async def test_a_job_that_returns_after_the_drain_deadline_is_acked_not_given_back(broker: Broker) -> None:
    app = App(broker)
    finished: list[int] = []

    @app.task(name="careful", timeout=None)
    async def careful() -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(1.0)
            finished.append(1)

    await careful.enqueue()
    async with running(app, lease_seconds=10, drain_seconds=0.2) as worker:
        await eventually(lambda: len(worker.stall.jobs) == 1)
        worker.stop()
    assert finished == [1]
    assert (worker.stats.done, worker.stats.released) == (1, 0)
    assert await settled(broker) == (0, 0, 0, 0)


async def test_a_stop_gives_back_fetched_jobs_that_have_not_started_at_once(broker: Broker) -> None:
    app = App(broker)
    started: list[int] = []

    @app.task(name="long", timeout=None)
    async def long(i: int) -> None:
        started.append(i)
        await anyio.sleep(2.0)

    for i in range(5):
        await long.enqueue(i)
    async with running(app, concurrency=1, prefetch=5, lease_seconds=30, drain_seconds=10) as worker:
        await eventually(lambda: len(started) == 1 and worker.keeper is not None and len(worker.keeper.held) == 5)
        worker.stop()
        await eventually(lambda: worker.stats.released == 4, within=1.5)
        ready, _, in_flight, _ = await settled(broker)
        assert (ready, in_flight) == (4, 1), "the four waiting jobs are back at once; the running one drains"
    assert worker.stats.done == 1
    assert started == started[:1]


async def test_with_heartbeats_off_a_call_timeout_longer_than_the_lease_never_runs_twice_at_once(
    broker: Broker,
) -> None:
    app = App(broker)
    active: list[int] = []
    most = [0]

    @app.task(name="slow", timeout=0.5, max_attempts=2, backoff=QUICK)
    async def slow() -> None:
        active.append(1)
        most[0] = max(most[0], len(active))
        try:
            await anyio.sleep(3.0)
        finally:
            active.pop()

    await slow.options(timeout=30).enqueue()
    async with running(app, lease_seconds=1.0, heartbeat_seconds=0, concurrency=4) as worker:
        await eventually(lambda: worker.stats.dead == 1, within=15)
    assert most[0] == 1, "capped at the lease: never redelivered while it runs"
    assert worker.stats.retried == 1
    [dead] = await broker.list_dead("default")
    assert dead.info.error_type == "JobTimeout"


async def test_every_job_acked_before_a_stop_is_counted_and_none_is_given_back(broker: Broker) -> None:
    app = App(broker)
    ran: Counter[int] = Counter()

    @app.task(name="quick")
    async def quick(i: int) -> None:
        ran[i] += 1

    total = 300
    await app.enqueue_many(quick, [quick.call(i) for i in range(total)])
    async with running(app, lease_seconds=30) as worker:
        await eventually(lambda: len(ran) >= 50, within=10)
        worker.stop()
    ready, scheduled, in_flight, dead = await settled(broker)
    assert worker.stats.done == len(ran) == sum(ran.values()), "every job that ran was acked and counted"
    assert (in_flight, scheduled, dead) == (0, 0, 0)
    assert ready == total - worker.stats.done, "given back, not lost"
    assert worker.stats.settled == worker.stats.done + worker.stats.released


async def test_stop_at_any_moment_of_a_drain_returns_promptly_and_loses_nothing(broker: Broker) -> None:
    app = App(broker)
    ran: Counter[int] = Counter()

    @app.task(name="tiny")
    async def tiny(i: int) -> None:
        ran[i] += 1
        if i % 7 == 0:
            await anyio.sleep(0.01)

    rng = random.Random(12)
    total = 0
    for trial in range(8):
        batch = [tiny.call(total + i) for i in range(60)]
        total += len(batch)
        await app.enqueue_many(tiny, batch)
        worker = Worker(app, WorkerConfig(lease_seconds=30, drain_seconds=2, shutdown_signals=False))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await anyio.sleep(rng.random() * 0.3 if trial % 2 else 0.0)
            worker.stop()
            stopped_at = time.monotonic()
        assert time.monotonic() - stopped_at < 4, f"trial {trial}: run() did not return after stop()"
        assert (await broker.stats("default")).in_flight == 0
    async with running(app, lease_seconds=30) as worker:
        await eventually(lambda: len(ran) == total, within=20)
    assert len(ran) == total, "nothing lost"
    assert max(ran.values()) == 1, "nothing ran twice"

"""The worker's promises (DESIGN.md), on the in-memory broker."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

import anyio
import pytest

import asyncjobs.worker as worker_module
from asyncjobs import App, CallNext, Job, Outcome, PayloadTooLargeError, PermanentError, Retry
from asyncjobs.broker import OutgoingJob
from asyncjobs.envelope import Envelope, decode
from asyncjobs.memory import MemoryBroker
from asyncjobs.retrying import Backoff
from tests.runtime.helpers import eventually, memory_app, running

pytestmark = pytest.mark.anyio
QUICK = Backoff(base=0.01, cap=0.05)


async def test_timeout_cancels_only_its_own_job() -> None:
    app = memory_app()
    finished: list[str] = []

    @app.task(name="stuck", timeout=0.2, max_attempts=1)
    async def stuck() -> None:
        await anyio.sleep(30)

    @app.task(name="steady")
    async def steady() -> None:
        await anyio.sleep(0.5)
        finished.append("steady")

    await stuck.enqueue()
    await steady.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1 and worker.stats.dead == 1)
    [dead] = await app.broker.list_dead("default")
    assert dead.info.error_type == "JobTimeout"
    assert finished == ["steady"]
    assert worker.stats.timed_out == 1


async def test_a_shielded_section_of_a_handler_finishes_before_its_timeout_cancels_it() -> None:
    """The job's scope is an anyio scope: a handler's ``CancelScope(shield=True)`` holds against it."""
    app = memory_app()
    steps: list[str] = []

    @app.task(name="careful", timeout=0.2, max_attempts=1)
    async def careful() -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.5)  # past the deadline: a write that must not be cut in half
            steps.append("committed")
        await anyio.sleep(30)
        steps.append("never")

    await careful.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    assert steps == ["committed"]
    [dead] = await app.broker.list_dead("default")
    assert dead.info.error_type == "JobTimeout"


async def test_a_handler_sees_its_deadline_as_the_effective_deadline() -> None:
    """Code inside a handler can budget its own calls with anyio.current_effective_deadline()."""
    app = memory_app()
    seen: list[float] = []

    @app.task(name="budgeted", timeout=7)
    async def budgeted() -> None:
        seen.append(anyio.current_effective_deadline() - anyio.current_time())

    await budgeted.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert len(seen) == 1 and 6.5 < seen[0] <= 7


async def test_a_short_deadline_after_a_long_one_still_fires_on_time() -> None:
    """Deadlines share one timer: a job due sooner than every running one must re-arm it."""
    app = memory_app()
    ended: dict[str, float] = {}

    @app.task(name="long", timeout=5)
    async def long() -> None:
        await anyio.sleep(1.0)
        ended["long"] = time.monotonic()

    @app.task(name="short", timeout=0.2, max_attempts=1)
    async def short() -> None:
        await anyio.sleep(30)

    await long.enqueue()
    started = time.monotonic()
    async with running(app, concurrency=2) as worker:
        await eventually(lambda: worker.stats.done == 1)  # the long job runs first, its deadline armed first
        await short.enqueue()
        short_at = time.monotonic()
        await eventually(lambda: worker.stats.dead == 1)
        short_took = time.monotonic() - short_at
    assert worker.stats.timed_out == 1
    assert 0.2 <= ended["long"] - started < 4, "the long job finished, not cancelled"
    assert short_took < 1.5, f"the 0.2 s deadline fired after {short_took:.2f} s"


async def test_short_deadline_while_a_long_one_runs_fires_on_time() -> None:
    app = memory_app()

    @app.task(name="long", timeout=20)
    async def long() -> None:
        await anyio.sleep(3)

    @app.task(name="short", timeout=0.2, max_attempts=1)
    async def short() -> None:
        await anyio.sleep(30)

    await long.enqueue()
    async with running(app, concurrency=2, drain_seconds=0.1) as worker:
        await eventually(lambda: len(worker.stall.jobs) == 1)  # the long job holds the timer at +20 s
        await short.enqueue()
        at = time.monotonic()
        await eventually(lambda: worker.stats.dead == 1, within=5)
        took = time.monotonic() - at
    assert worker.stats.timed_out == 1
    assert took < 1.5, f"the 0.2 s deadline fired after {took:.2f} s"


async def test_runs_as_many_jobs_at_once_as_its_concurrency() -> None:
    app = memory_app()
    now_running, most = 0, 0

    @app.task(name="slow")
    async def slow() -> None:
        nonlocal now_running, most
        now_running += 1
        most = max(most, now_running)
        await anyio.sleep(0.3)
        now_running -= 1

    async with running(app, concurrency=4) as worker:
        await anyio.sleep(0.2)  # every runner is idle, waiting: the jobs arrive in one fetch
        started = time.monotonic()
        await app.enqueue_many(slow, [slow.call() for _ in range(12)])
        await eventually(lambda: worker.stats.done == 12)
    assert most == 4
    assert time.monotonic() - started < 12 * 0.3 / 2, "jobs ran one after another"


async def test_job_longer_than_its_lease_runs_once_while_heartbeats_hold() -> None:
    app = memory_app()
    runs: list[int] = []

    @app.task(name="long", timeout=10)
    async def long() -> None:
        runs.append(1)
        await anyio.sleep(2.0)  # more than three leases of 0.6 s

    await long.enqueue()
    async with running(app, lease_seconds=0.6) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert runs == [1]
    assert worker.stats.lease_lost == 0


async def test_job_of_a_vanished_worker_is_redelivered_once_after_its_lease() -> None:
    app = memory_app()
    seen: list[int] = []

    @app.task(name="once")
    async def once() -> None:
        seen.append(1)

    await once.enqueue()
    ghost = await app.broker.consumer(["default"], prefetch=1, lease_seconds=0.4)
    [taken] = await ghost.fetch(1, 1.0)  # a worker that took the job and died: no heartbeat, no ack
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
        await anyio.sleep(0.5)
    assert seen == [1]
    assert await ghost.ack([taken]) == [False]


async def test_lost_lease_cancels_handler_and_does_not_ack() -> None:
    app = memory_app()
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    cancelled = anyio.Event()
    started = anyio.Event()

    @app.task(name="victim", timeout=None)
    async def victim() -> None:
        started.set()
        try:
            await anyio.sleep(30)
        except BaseException:
            cancelled.set()
            raise

    await victim.enqueue()
    async with running(app, lease_seconds=0.6) as worker:
        with anyio.fail_after(5):
            await started.wait()
        assert broker.expire_leases() == 1  # the lease expires under the worker's feet
        thief = await broker.consumer(["default"], prefetch=1, lease_seconds=30)
        [stolen] = await thief.fetch(1, 1.0)
        with anyio.fail_after(5):
            await cancelled.wait()
        await eventually(lambda: worker.stats.lease_lost == 1)
    assert worker.stats.done == 0
    assert await thief.ack([stolen]) == [True], "the job still belongs to the new lease holder"


async def test_poison_pill_ends_in_dead_letters_counting_crash_redeliveries() -> None:
    app = memory_app()
    runs: list[int] = []

    @app.task(name="poison", max_attempts=3)
    async def poison() -> None:
        runs.append(1)

    await poison.enqueue()
    for _ in range(3):  # three workers each took it and crashed before settling
        crashed = await app.broker.consumer(["default"], prefetch=1, lease_seconds=0.1)
        assert len(await crashed.fetch(1, 2.0)) == 1
        await anyio.sleep(0.15)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    assert runs == [], "a job past its attempts is not run again"
    [dead] = await app.broker.list_dead("default")
    assert dead.info.reason == "max_attempts"
    assert dead.info.attempts == 4
    assert "delivered 4 times" in dead.info.error_message


async def test_malformed_message_is_dead_lettered_with_its_bytes_intact() -> None:
    app = memory_app()
    raw = b'{"v": 1, "task": 42'
    await app.broker.enqueue([OutgoingJob("m1", "default", raw)])
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    [dead] = await app.broker.list_dead("default")
    assert dead.body == raw
    assert dead.info.reason == "malformed"
    assert dead.info.error_type == "EnvelopeError"


async def test_deeply_nested_message_is_dead_lettered_and_the_worker_goes_on() -> None:
    """JSON nested deeper than the parser's recursion limit is bad input, not a crash of the worker."""
    app = memory_app()
    done: list[int] = []

    @app.task(name="after")
    async def after() -> None:
        done.append(1)

    raw = b'{"v":1,"id":"deep","task":"after","args":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    await app.broker.enqueue([OutgoingJob("deep", "default", raw)])
    await after.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1 and worker.stats.done == 1)
    [dead] = await app.broker.list_dead("default")
    assert dead.body == raw
    assert dead.info.reason == "malformed"
    assert "nested too deeply" in dead.info.error_message
    assert done == [1]


async def test_a_history_field_of_the_wrong_shape_does_not_stop_retries_or_dead_letters() -> None:
    """A producer's odd ``history`` must not make settling fail (the job would then run again forever)."""
    app = memory_app()
    runs: list[int] = []

    @app.task(name="fails", max_attempts=2, backoff=QUICK)
    async def fails() -> None:
        runs.append(1)
        raise ConnectionError("down")

    body = b'{"v":1,"id":"odd","task":"fails","args":[],"kwargs":{},"attempt":1,"history":5}'
    await app.broker.enqueue([OutgoingJob("odd", "default", body)])
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    assert len(runs) == 2 and worker.stats.retried == 1
    [dead] = await app.broker.list_dead("default")
    assert [entry["attempt"] for entry in dead.info.history] == [1, 2]


async def test_unknown_version_is_dead_lettered_with_a_clear_reason() -> None:
    app = memory_app()
    await app.broker.enqueue([OutgoingJob("v9", "default", b'{"v":9,"id":"v9","task":"t"}')])
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    [dead] = await app.broker.list_dead("default")
    assert "unsupported envelope version 9" in dead.info.error_message


async def test_unknown_task_is_dead_lettered_intact() -> None:
    app = memory_app()
    body = Envelope(task="nobody.registered.this", id="u1").encode()
    await app.broker.enqueue([OutgoingJob("u1", "default", body)])
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    [dead] = await app.broker.list_dead("default")
    assert dead.body == body
    assert (dead.info.reason, dead.info.error_type) == ("unknown_task", "UnknownTaskError")


async def test_wrong_arguments_are_dead_lettered_not_retried() -> None:
    app = memory_app()

    @app.task(name="typed")
    async def typed(a: int) -> None:
        return None

    await app.broker.enqueue([OutgoingJob("w1", "default", Envelope(task="typed", id="w1", kwargs={"b": 1}).encode())])
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    [dead] = await app.broker.list_dead("default")
    assert dead.info.reason == "permanent"
    assert "bad arguments" in dead.info.error_message
    assert worker.stats.retried == 0


async def test_a_handler_that_changes_its_list_argument_does_not_change_the_next_attempt() -> None:
    """The next attempt is built from the body as enqueued, not from the arguments the handler changed."""
    app = memory_app()
    seen: list[list[int]] = []

    @app.task(name="mutates", max_attempts=2, backoff=QUICK)
    async def mutates(items: list[int]) -> None:
        seen.append(list(items))
        items.append(99)
        if len(seen) == 1:
            raise ConnectionError("flaky")

    await mutates.enqueue([1, 2])
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert seen == [[1, 2], [1, 2]]


async def test_transient_errors_retry_with_backoff_then_succeed() -> None:
    app = memory_app()
    attempts: list[float] = []

    @app.task(name="flaky", max_attempts=4, backoff=Backoff(base=0.1, cap=1.0, jitter=0.0))
    async def flaky() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("down")

    await flaky.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.09
    assert attempts[2] - attempts[1] >= 0.19, "the second backoff doubles"
    assert worker.stats.retried == 2


async def test_permanent_error_goes_to_dead_letters_at_once_with_history() -> None:
    app = memory_app()

    @app.task(name="bad", max_attempts=5)
    async def bad() -> None:
        raise PermanentError("no such customer")

    await bad.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    [dead] = await app.broker.list_dead("default")
    assert (dead.info.reason, dead.info.attempts) == ("permanent", 1)
    assert "PermanentError: no such customer" in dead.info.traceback
    assert dead.info.history[-1]["outcome"] == "dead"


async def test_retries_exhausted_end_in_dead_letters_with_attempt_history() -> None:
    app = memory_app()

    @app.task(name="always", max_attempts=3, backoff=QUICK)
    async def always() -> None:
        raise Retry("again")

    await always.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    [dead] = await app.broker.list_dead("default")
    assert dead.info.reason == "max_attempts"
    assert [h["attempt"] for h in dead.info.history] == [1, 2, 3]
    assert decode(dead.body).attempt == 3


async def test_shutdown_drains_then_gives_back_the_rest_without_waiting_for_leases() -> None:
    app = memory_app()
    started: list[str] = []

    @app.task(name="short", timeout=None)
    async def short() -> None:
        started.append("short")
        await anyio.sleep(0.2)

    @app.task(name="endless", timeout=None)
    async def endless() -> None:
        started.append("endless")
        await anyio.sleep(60)

    await short.enqueue()
    await endless.enqueue()
    async with running(app, lease_seconds=60, drain_seconds=0.6) as worker:
        await eventually(lambda: len(started) == 2)
        stopped_at = time.monotonic()
        worker.stop()
    assert time.monotonic() - stopped_at < 3
    assert worker.stats.done == 1
    assert worker.stats.released >= 1
    stats = await app.broker.stats("default")
    assert (stats.ready, stats.in_flight) == (1, 0), "given back at once, not after the 60 s lease"
    consumer = await app.broker.consumer(["default"], prefetch=1, lease_seconds=5)
    [again] = await consumer.fetch(1, 0.5)
    assert decode(again.body).task == "endless"
    assert again.delivery_count == 1, "a job given back at shutdown does not count as a crash"


async def test_second_stop_gives_back_at_once() -> None:
    app = memory_app()

    @app.task(name="endless", timeout=None)
    async def endless() -> None:
        await anyio.sleep(60)

    await endless.enqueue()
    async with running(app, drain_seconds=30) as worker:
        await eventually(lambda: len(worker.stall.jobs) == 1)
        stopped_at = time.monotonic()
        worker.stop()
        worker.stop()
    assert time.monotonic() - stopped_at < 3
    assert worker.stats.released >= 1
    assert (await app.broker.stats("default")).ready == 1


async def test_handler_that_swallows_cancellation_is_reported_and_worker_stays_healthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = memory_app()
    done: list[int] = []

    @app.task(name="stubborn", timeout=0.2, max_attempts=1)
    async def stubborn() -> None:
        with contextlib.suppress(BaseException):
            await anyio.sleep(30)

    @app.task(name="after")
    async def after() -> None:
        done.append(1)

    await stubborn.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
        await after.enqueue()
        await eventually(lambda: worker.stats.done == 1)
    assert "swallowed its cancellation" in caplog.text
    [dead] = await app.broker.list_dead("default")
    assert dead.info.error_type == "JobTimeout"
    assert done == [1]


async def test_blocking_handler_is_named_as_the_cause_of_a_loop_stall(caplog: pytest.LogCaptureFixture) -> None:
    app = memory_app()

    @app.task(name="blocker")
    async def blocker() -> None:
        time.sleep(0.8)  # noqa: ASYNC251 - the bug under test: blocks the event loop

    ref = await blocker.enqueue()
    caplog.set_level(logging.ERROR)
    async with running(app, stall_seconds=0.2) as worker:
        await eventually(lambda: worker.stats.done == 1)
        await eventually(lambda: worker.stall.stalls >= 1)
    assert f"job {ref.id} (task blocker" in caplog.text
    assert "event loop blocked" in caplog.text


async def test_enqueue_checks_arguments_and_size() -> None:
    app = memory_app()
    app.max_payload_bytes = 100

    @app.task(name="echo")
    async def echo(text: str) -> None:
        return None

    with pytest.raises(TypeError, match="echo"):
        await echo.enqueue(nope=1)  # type: ignore[call-arg]
    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes=100"):
        await echo.enqueue("x" * 200)
    assert (await app.broker.stats("default")).ready == 0


async def test_idempotency_key_blocks_a_second_enqueue() -> None:
    app = memory_app()

    @app.task(name="charge")
    async def charge(order: int) -> None:
        return None

    first = await charge.options(key="order-7").enqueue(7)
    second = await charge.options(key="order-7").enqueue(7)
    assert (first.accepted, second.accepted) == (True, False)
    assert (await app.broker.stats("default")).ready == 1


async def test_per_call_options_override_the_task() -> None:
    app = memory_app()

    @app.task(name="opts", timeout=5, queue="low")
    async def opts() -> None:
        return None

    ref = await opts.options(queue="high", timeout=1.5, delay=30, max_attempts=2).enqueue()
    assert ref.queue == "high"
    stats = await app.broker.stats("high")
    assert stats.scheduled == 1


def test_a_memory_broker_serves_one_event_loop_after_another() -> None:
    app = memory_app()

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async def one_round() -> int:
        await noop.enqueue()
        async with running(app) as worker:
            await eventually(lambda: worker.stats.done == 1)
        return worker.stats.done

    assert anyio.run(one_round) == 1
    assert anyio.run(one_round) == 1


async def test_memory_broker_keeps_no_record_of_settled_leases_for_long() -> None:
    """Lease entries of acked jobs are dropped well before their 30 s deadlines pass."""
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    consumer = await broker.consumer(["q"], prefetch=50, lease_seconds=30)
    await broker.enqueue([OutgoingJob(uuid.uuid4().hex, "q", b"{}") for _ in range(5000)])
    acked = 0
    while acked < 5000:
        got = await consumer.fetch(50, 0)
        assert all(await consumer.ack(got))
        acked += len(got)
    leased = broker._queue("q").leased
    assert len(leased) <= 2 * 50 + 1024, f"{len(leased)} lease entries kept for 5000 settled jobs"
    await broker.enqueue([OutgoingJob(uuid.uuid4().hex, "q", b"{}") for _ in range(3000)])
    held = await consumer.fetch(10, 0)  # held through the compactions that follow, then extended
    assert len(held) == 10
    while acked < 8000 - 10:
        got = await consumer.fetch(40, 0)
        assert all(await consumer.ack(got))
        acked += len(got)
    assert await consumer.extend(held) == [True] * 10
    assert all(await consumer.ack(held))


class SlowBefore:
    """A middleware that awaits something slow before the job's own scope opens."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.entered = anyio.Event()

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        self.entered.set()
        await anyio.sleep(self.seconds)
        return await call_next(job)


async def test_lease_lost_while_in_middleware_never_runs_the_handler() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    slow = SlowBefore(1.0)
    app = App(broker, middleware=[slow])
    ran: list[int] = []

    @app.task(name="late", timeout=None)
    async def late() -> None:
        ran.append(1)

    await late.enqueue()
    async with running(app, lease_seconds=0.6) as worker:
        with anyio.fail_after(5):
            await slow.entered.wait()
        assert broker.expire_leases() == 1
        thief = await broker.consumer(["default"], prefetch=1, lease_seconds=30)
        [stolen] = await thief.fetch(1, 1.0)
        await eventually(lambda: worker.stats.lease_lost == 1)
    assert ran == [], "the handler must not start once the lease is known lost"
    assert await thief.ack([stolen]) == [True]


async def test_job_stuck_in_middleware_does_not_hold_up_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "_STUCK_GRACE", 0.5)
    slow = SlowBefore(60)
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"), middleware=[slow])

    @app.task(name="stuck", timeout=None)
    async def stuck() -> None:
        pass

    await stuck.enqueue()
    async with running(app, lease_seconds=60, drain_seconds=0.2) as worker:
        with anyio.fail_after(5):
            await slow.entered.wait()
        stopped_at = time.monotonic()
        worker.stop()
    assert time.monotonic() - stopped_at < 3
    stats = await app.broker.stats("default")
    assert (stats.ready, stats.in_flight) == (1, 0), "given back at once, not after the 60 s lease"
    assert worker.stats.released == 1


async def test_runners_that_fetch_for_themselves_never_hold_more_leases_than_prefetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner out of work leases the next jobs itself (see ``Worker._refill``); one fetch at a time, within prefetch."""
    from asyncjobs.memory import MemoryConsumer

    app = memory_app()
    started: list[int] = []
    seen: list[tuple[int, int]] = []  # (leases held when a fetch began, how many it asked for)
    in_flight = 0
    overlapped = False
    worker_ref: list[object] = []
    real_fetch = MemoryConsumer.fetch

    async def watched_fetch(self: MemoryConsumer, max_count: int, wait_seconds: float) -> list[object]:
        nonlocal in_flight, overlapped
        overlapped = overlapped or in_flight > 0
        in_flight += 1
        try:
            keeper = worker_ref[0].keeper  # type: ignore[attr-defined]
            seen.append((len(keeper.held), max_count))
            return await real_fetch(self, max_count, wait_seconds)  # type: ignore[return-value]
        finally:
            in_flight -= 1

    monkeypatch.setattr(MemoryConsumer, "fetch", watched_fetch)

    @app.task(name="quick")
    async def quick(n: int) -> None:
        started.append(n)

    await app.enqueue_many(quick, [quick.call(i) for i in range(2000)])
    async with running(app, concurrency=4, prefetch=8) as worker:
        worker_ref.append(worker)
        await eventually(lambda: worker.stats.done == 2000, within=30)
    assert sorted(started) == list(range(2000)), "every job ran, once"
    assert not overlapped, "two fetches ran at once"
    assert all(held + wanted <= 8 for held, wanted in seen), "a fetch asked for more than the free lease slots"
    assert len(seen) < 2000, "jobs were fetched in batches"


async def test_memory_broker_counts_a_delivery_named_twice_in_one_ack_or_release_once() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    sent = [OutgoingJob(uuid.uuid4().hex, "twice", b"{}"), OutgoingJob(uuid.uuid4().hex, "twice", b"{}")]
    assert await broker.enqueue(sent) == [True, True]
    consumer = await broker.consumer(["twice"], prefetch=10, lease_seconds=30)
    try:
        first, second = await consumer.fetch(2, 1.0)
        assert await consumer.ack([first, first]) == [True, False]
        await consumer.release([second, second])
        [again] = await consumer.fetch(1, 1.0)
        assert again.job_id == second.job_id
        assert await consumer.fetch(1, 0.3) == [], "released once, delivered once"
        assert await consumer.ack([again]) == [True]
    finally:
        await consumer.close()
    assert (await broker.stats("twice")).in_flight == 0

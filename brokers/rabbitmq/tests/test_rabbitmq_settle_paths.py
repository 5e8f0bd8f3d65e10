"""No error path strands a delivery: each ends acked, nacked, re-published then acked, or with its channel.

On amqp:// a delivery nobody settles keeps its prefetch slot for as long as the channel lives, so a
stranded one is a job that never runs and a worker that slows to a halt. Driven on the real server
with a delay bucket that exists with other arguments (the server refuses the declaration and closes
the channel it came on), then checked that new jobs flow at full prefetch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import anyio
import pytest
from asyncjobs_rabbitmq import RabbitBroker, RabbitConsumer, wire

from asyncjobs import App, Backoff, Retry
from asyncjobs.broker import Delivery, OutgoingJob
from asyncjobs.clock import monotonic, wall_time
from tests.harness import require_server
from tests.harness.rabbitmq import URL, rabbitmq_harness
from tests.runtime.helpers import eventually, running
from tests.servers.proxy import tcp_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]


@pytest.fixture(params=["quorum", "classic"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RabbitBroker]:
    require_server("rabbitmq")
    async with rabbitmq_harness(f"s{uuid.uuid4().hex[:10]}", request.param) as connected:
        assert isinstance(connected, RabbitBroker)
        yield connected


async def conflicting_bucket(broker: RabbitBroker, queue: str, ms: int) -> None:
    """Declare the delay bucket of ``ms`` as a plain classic queue, as a foreign app might have."""
    names = await broker.topology.ensure(queue)
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        await channel.declare_queue(names.bucket(ms), durable=True)
    finally:
        await connection.close()


def body(job_id: str, task: str = "t") -> bytes:
    return json.dumps({"v": 1, "id": job_id, "task": task}).encode()


async def test_a_retry_whose_bucket_cannot_be_declared_still_runs_later_and_jobs_flow_at_full_prefetch(
    broker: RabbitBroker,
) -> None:
    await conflicting_bucket(broker, "default", 1000)
    app = App(broker)
    runs: dict[str, int] = {}
    running_now: list[int] = [0]
    most: list[int] = [0]

    @app.task(name="flaky", backoff=Backoff(base=1.5, jitter=0.0), max_attempts=3)
    async def flaky(name: str) -> None:
        runs[name] = runs.get(name, 0) + 1
        if runs[name] == 1:
            raise Retry("later")

    @app.task(name="quiet")
    async def quiet(name: str, seconds: float) -> None:
        runs[name] = runs.get(name, 0) + 1
        running_now[0] += 1
        most[0] = max(most[0], running_now[0])
        try:
            await anyio.sleep(seconds)
        finally:
            running_now[0] -= 1

    for i in range(4):
        await flaky.enqueue(f"f{i}")
    for i in range(20):
        await quiet.enqueue(f"q{i}", 0.0)
    async with running(app, concurrency=2, prefetch=2, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.done == 24, within=30)
        assert {name: runs[name] for name in runs if name.startswith("f")} == {f"f{i}": 2 for i in range(4)}
        assert worker.stats.retried == 4 and worker.stats.settle_failed == 0, worker.stats
    assert (await broker.stats("default")).in_flight == 0
    async with running(app, concurrency=10, prefetch=10, lease_seconds=10) as worker:
        for i in range(40):
            await quiet.enqueue(f"n{i}", 0.3)
        await eventually(lambda: worker.stats.done == 40, within=30)
    assert all(runs[f"n{i}"] == 1 for i in range(40))
    assert most[0] == 10, f"at most {most[0]} of 10 jobs ran at once after the declare conflict"


async def test_a_fetch_that_fails_on_one_message_hands_out_those_admitted_before_it(broker: RabbitBroker) -> None:
    await conflicting_bucket(broker, "default", 4000)
    names = await broker.topology.ensure("default")
    ids = [uuid.uuid4().hex for _ in range(7)]
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        for index, job_id in enumerate(ids):
            headers = {wire.DUE: int((wall_time() + 5.0) * 1000)} if index == 3 else None
            message = aio_pika.Message(body(job_id), message_id=job_id, headers=headers)
            await channel.default_exchange.publish(message, routing_key=names.work)
    finally:
        await connection.close()
    consumer = await broker.consumer(["default"], prefetch=10, lease_seconds=30)
    assert isinstance(consumer, RabbitConsumer)
    try:
        got: list[Delivery] = []
        deadline = monotonic() + 5.0
        while len(got) < 6 and monotonic() < deadline:
            got += await consumer.fetch(10, 0.2)
        assert sorted(d.job_id or "" for d in got) == sorted(ids[:3] + ids[4:]), "each ready job, none stranded"
        assert await consumer.ack(got) == [True] * 6
        late = []
        with anyio.fail_after(10):
            while not late:
                late = await consumer.fetch(10, 0.5)
        assert [d.job_id for d in late] == [ids[3]], "the early one ran when due"
        assert await consumer.ack(late) == [True]
    finally:
        await consumer.close()
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.in_flight) == (0, 0, 0)


def _window_entries(consumer: RabbitConsumer) -> int:
    return sum(len(getattr(w, name, ())) for w in consumer._windows.values() for name in ("unacked", "order", "acked"))


async def test_acking_20000_fast_jobs_behind_one_long_job_keeps_the_bookkeeping_bounded() -> None:
    require_server("rabbitmq")
    async with rabbitmq_harness(f"s{uuid.uuid4().hex[:10]}", "quorum") as broker:
        assert isinstance(broker, RabbitBroker)
        long_job = OutgoingJob(uuid.uuid4().hex, "default", body("long"))
        await broker.enqueue([long_job])
        for _ in range(10):
            batch = [OutgoingJob(uuid.uuid4().hex, "default", b"{}") for _ in range(2000)]
            await broker.enqueue(batch)
        consumer = await broker.consumer(["default"], prefetch=100, lease_seconds=60)
        assert isinstance(consumer, RabbitConsumer)
        try:
            with anyio.fail_after(10):
                [first] = await consumer.fetch(1, 5.0)
            assert first.job_id == long_job.id
            acked = largest = 0
            with anyio.fail_after(90):
                while acked < 20_000:
                    got = await consumer.fetch(99, 1.0)
                    assert all(await consumer.ack(got))
                    acked += len(got)
                    largest = max(largest, _window_entries(consumer))
            assert largest <= 101, f"the ack window held {largest} entries behind one unfinished job"
            assert all(size <= 200 for size in consumer.adoption.sizes().values()), consumer.adoption.sizes()
            assert await consumer.ack([first]) == [True]
            assert _window_entries(consumer) == 0
        finally:
            await consumer.close()


async def test_an_ack_written_into_a_connection_the_server_then_drops_is_not_counted_done() -> None:
    """The frame of an ack has no reply: written into a stalled connection, it is lost when the server
    drops that connection, and the job runs again. ``ack`` says ``True`` only once the server read it."""
    require_server("rabbitmq")
    prefix = f"s{uuid.uuid4().hex[:10]}"
    async with rabbitmq_harness(prefix, "quorum") as direct:
        sent = OutgoingJob(uuid.uuid4().hex, "default", body("x"))
        await direct.enqueue([sent])
        with tcp_proxy("127.0.0.1", 5672) as proxy:
            via = RabbitBroker(
                f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=2&queue_type=quorum&queue_prefix={prefix}."
            )
            await via.connect()
            consumer = await via.consumer(["default"], prefetch=5, lease_seconds=30)
            [delivery] = await consumer.fetch(1, 5.0)
            proxy.stall()
            with anyio.fail_after(40):
                acked = await consumer.ack([delivery])
            other = await direct.consumer(["default"], prefetch=5, lease_seconds=30)
            try:
                again: list[Delivery] = []
                with anyio.fail_after(30):
                    while not again:
                        again = await other.fetch(1, 0.5)
                assert [d.job_id for d in again] == [sent.id], "the server gave the job back"
                assert await other.ack(again) == [True]
            finally:
                await other.close()
            assert acked == [False], "an ack the server never read was counted as done"
            proxy.cut()
            with anyio.move_on_after(5):
                await consumer.close()
            with anyio.move_on_after(5):
                await via.close()


@pytest.mark.parametrize("cut_after", [0.002, 0.01, 0.05])
async def test_a_give_back_cut_short_by_a_cancellation_leaves_each_job_once(
    broker: RabbitBroker, cut_after: float
) -> None:
    """A shutdown's deadline may cancel a give-back while its copies are being confirmed: each job stays once."""
    await broker.enqueue([OutgoingJob(uuid.uuid4().hex, "default", b"{}") for _ in range(300)])
    consumer = await broker.consumer(["default"], prefetch=300, lease_seconds=30)
    got: list[Delivery] = []
    with anyio.fail_after(10):
        while len(got) < 300:
            got += await consumer.fetch(300, 0.5)
    with anyio.move_on_after(cut_after):
        await consumer.release(got)
    await consumer.close()
    await anyio.sleep(1.0)
    assert (await broker.stats("default")).ready == 300, "each job is in the queue once"


async def test_after_the_server_refuses_an_oversize_message_the_next_enqueue_goes_through() -> None:
    """RabbitMQ closes the publishing channel on a message over its max size; the next publish opens another."""
    require_server("rabbitmq")
    from asyncjobs.errors import BrokerError

    async with rabbitmq_harness(f"t{uuid.uuid4().hex[:10]}") as broker:
        huge = b"x" * (129 * 1024 * 1024)  # over RabbitMQ's default max_message_size (128 MiB)
        with pytest.raises(BrokerError, match="larger than configured max size"):
            await broker.enqueue([OutgoingJob("huge", "default", huge)])
        del huge
        body = b'{"v":1,"id":"small","task":"t"}'
        assert await broker.enqueue([OutgoingJob("small", "default", body)]) == [True]
        assert (await broker.stats("default")).ready == 1


async def test_a_settle_that_fails_is_logged_with_what_rabbitmq_does_with_the_job(
    broker: RabbitBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """No lease ends on amqp://: the log says the job is nacked or comes back with its channel."""
    app = App(broker)
    caplog.set_level("ERROR", logger="asyncjobs.settle")
    async with running(app, concurrency=1, prefetch=1, lease_seconds=10) as worker:
        await eventually(worker.ready.is_set)
        names = await broker.topology.ensure("default")
        connection = await aio_pika.connect(URL)
        try:  # the dead-letter queue is gone: storing the dead letter is refused (unroutable)
            channel = await connection.channel()
            await channel.queue_delete(names.dead)
        finally:
            await connection.close()
        await broker.enqueue([OutgoingJob(uuid.uuid4().hex, "default", body("x", task="no.such.task"))])
        await eventually(lambda: worker.stats.settle_failed >= 1, within=20)
        worker.stop()
    [line, *_] = [r.getMessage() for r in caplog.records if "could not dead-letter it" in r.getMessage()]
    assert "nacked back to its queue" in line, line
    assert line.endswith(RabbitConsumer.comes_back), line
    assert "when its lease ends" not in line, line


async def test_a_give_back_whose_confirms_are_slow_leaves_each_job_once() -> None:
    """A loaded server may confirm the copies of a shutdown's give-back late: the originals are acked
    when the confirms come, not nacked back beside their stored copies (each job would run twice)."""
    require_server("rabbitmq")
    from asyncjobs_rabbitmq.consumer import REPUBLISH_TIMEOUT

    prefix = f"s{uuid.uuid4().hex[:10]}"
    async with rabbitmq_harness(prefix, "quorum") as direct:
        await direct.enqueue([OutgoingJob(uuid.uuid4().hex, "default", body(f"j{i}")) for i in range(20)])
        with tcp_proxy("127.0.0.1", 5672) as proxy:
            via = RabbitBroker(
                f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=60&queue_type=quorum&queue_prefix={prefix}."
            )
            await via.connect()
            try:
                consumer = await via.consumer(["default"], prefetch=20, lease_seconds=30)
                got: list[Delivery] = []
                with anyio.fail_after(10):
                    while len(got) < 20:
                        got += await consumer.fetch(20, 0.5)
                slow = 4.5
                assert slow < REPUBLISH_TIMEOUT, "the stall must stay within the time a give-back waits"
                proxy.stall(slow)  # the copies' confirms come 4.5 s late
                with anyio.fail_after(REPUBLISH_TIMEOUT + 5):
                    await consumer.release(got)
                await consumer.close()
            finally:
                await via.close()
        await anyio.sleep(1.0)
        assert (await direct.stats("default")).ready == 20, "each job is in the queue once"

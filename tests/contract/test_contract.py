"""The broker contract: every broker (in-memory, Redis, RabbitMQ) passes these unchanged.

Each test names one guarantee of :mod:`asyncjobs.broker`. Brokers whose leases end with their
connection rather than with a deadline (RabbitMQ) say so with ``leases_expire = False``; the
deadline tests are skipped for them and the abandoned-consumer tests cover both kinds.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import anyio
import pytest

from asyncjobs.broker import Broker, Consumer, DeadLetterInfo, Delivery, OutgoingJob
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.envelope import Envelope, decode

pytestmark = pytest.mark.anyio

Q = "contract"


def job(
    body: bytes | None = None, *, queue: str = Q, not_before: float | None = None, key: str | None = None
) -> OutgoingJob:
    job_id = uuid.uuid4().hex
    return OutgoingJob(
        id=job_id,
        queue=queue,
        body=body if body is not None else f'{{"v":1,"id":"{job_id}","task":"t"}}'.encode(),
        not_before=not_before,
        unique_key=key,
        unique_ttl=30.0 if key else 0.0,
    )


async def fetch_all(consumer: Consumer, want: int, within: float = 10.0) -> list[Delivery]:
    """Fetch until ``want`` deliveries arrived or ``within`` seconds passed."""
    got: list[Delivery] = []
    deadline = monotonic() + within
    while len(got) < want and monotonic() < deadline:
        got += await consumer.fetch(want - len(got), min(0.5, max(deadline - monotonic(), 0.01)))
    return got


def expiring(broker: Broker) -> None:
    if not getattr(broker, "leases_expire", True):
        pytest.skip("this broker's leases end with their channel, not a deadline (see the abandon tests)")


async def open_consumer(
    broker: Broker, lease: float = 30.0, prefetch: int = 100, queues: Sequence[str] = (Q,)
) -> Consumer:
    return await broker.consumer(list(queues), prefetch=prefetch, lease_seconds=lease)


async def test_enqueued_job_is_fetched_once_with_body_intact(broker: Broker) -> None:
    sent = job()
    assert await broker.enqueue([sent]) == [True]
    consumer = await open_consumer(broker)
    try:
        [delivery] = await fetch_all(consumer, 1)
        assert delivery.body == sent.body
        assert delivery.job_id == sent.id
        assert delivery.queue == Q
        assert delivery.delivery_count == 1
        assert await consumer.fetch(1, 0.3) == []
    finally:
        await consumer.close()


async def test_a_delivery_that_carries_an_envelope_carries_what_its_body_decodes_to(broker: Broker) -> None:
    """``Delivery.envelope`` is a shortcut some brokers offer (memory://): never a different job."""
    plain = Envelope(task="t", args=(1, "a", 2.5), kwargs={"k": None})
    nested = Envelope(task="t", args=([1, 2],), kwargs={"d": {"x": 1}})
    sent = [OutgoingJob(env.id, Q, env.encode(), envelope=env) for env in (plain, nested)]
    assert await broker.enqueue(sent) == [True, True]
    consumer = await open_consumer(broker)
    try:
        deliveries = await fetch_all(consumer, 2)
        assert sorted(d.job_id or "" for d in deliveries) == sorted([plain.id, nested.id])
        for delivery in deliveries:
            assert delivery.envelope is None or delivery.envelope == decode(delivery.body)
            if delivery.job_id == nested.id:
                assert delivery.envelope is None, "an envelope holding lists or dicts is never shared"
        assert await consumer.ack(deliveries) == [True, True]
    finally:
        await consumer.close()


async def test_fetch_on_empty_queue_waits_then_returns_nothing(broker: Broker) -> None:
    consumer = await open_consumer(broker)
    try:
        started = monotonic()
        assert await consumer.fetch(5, 0.3) == []
        assert monotonic() - started >= 0.2
    finally:
        await consumer.close()


async def test_fetch_wakes_when_a_job_arrives(broker: Broker) -> None:
    consumer = await open_consumer(broker)
    try:
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                await anyio.sleep(0.2)
                await broker.enqueue([job()])

            tg.start_soon(produce)
            started = monotonic()
            got = await fetch_all(consumer, 1, within=5.0)
            assert len(got) == 1
            assert monotonic() - started < 3.0
    finally:
        await consumer.close()


async def test_ack_removes_job_and_second_ack_fails(broker: Broker) -> None:
    await broker.enqueue([job()])
    consumer = await open_consumer(broker)
    try:
        [delivery] = await fetch_all(consumer, 1)
        assert await consumer.ack([delivery]) == [True]
        assert await consumer.ack([delivery]) == [False]
        stats = await broker.stats(Q)
        assert (stats.ready, stats.scheduled, stats.dead) == (0, 0, 0)
    finally:
        await consumer.close()


async def test_batch_of_jobs_is_each_delivered_exactly_once_across_consumers(broker: Broker) -> None:
    sent = [job() for _ in range(60)]
    assert await broker.enqueue(sent) == [True] * 60
    first, second = await open_consumer(broker, prefetch=60), await open_consumer(broker, prefetch=60)
    try:
        seen: list[str | None] = []

        async def drain(consumer: Consumer) -> None:
            while True:
                got = await consumer.fetch(7, 0.5)
                if not got:
                    return
                seen.extend(d.job_id for d in got)
                assert all(await consumer.ack(got))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, first)
            tg.start_soon(drain, second)
        assert sorted(s for s in seen if s) == sorted(j.id for j in sent)
    finally:
        await first.close()
        await second.close()


async def test_fetch_returns_at_most_max_count(broker: Broker) -> None:
    await broker.enqueue([job() for _ in range(10)])
    consumer = await open_consumer(broker)
    try:
        await anyio.sleep(0.2)
        got = await consumer.fetch(3, 2.0)
        assert 1 <= len(got) <= 3
    finally:
        await consumer.close()


async def test_leased_job_is_not_given_to_another_consumer(broker: Broker) -> None:
    await broker.enqueue([job()])
    holder, other = await open_consumer(broker), await open_consumer(broker)
    try:
        assert len(await fetch_all(holder, 1)) == 1
        assert await other.fetch(1, 0.5) == []
    finally:
        await holder.close()
        await other.close()


async def test_closed_consumer_gives_its_jobs_back_at_once(broker: Broker) -> None:
    await broker.enqueue([job(), job()])
    holder = await open_consumer(broker, lease=60.0)
    got = await fetch_all(holder, 2)
    assert len(got) == 2
    await holder.close()
    other = await open_consumer(broker)
    try:
        again = await fetch_all(other, 2, within=5.0)
        assert sorted(d.job_id or "" for d in again) == sorted(d.job_id or "" for d in got)
    finally:
        await other.close()


async def test_released_job_is_ready_again_at_once(broker: Broker) -> None:
    await broker.enqueue([job()])
    consumer = await open_consumer(broker, lease=60.0)
    try:
        [delivery] = await fetch_all(consumer, 1)
        await consumer.release([delivery])
        [again] = await fetch_all(consumer, 1, within=5.0)
        assert again.job_id == delivery.job_id
        assert again.token != delivery.token
        assert await consumer.ack([delivery]) == [False]
        assert await consumer.ack([again]) == [True]
    finally:
        await consumer.close()


async def test_a_delivery_named_twice_in_one_ack_or_release_counts_once(broker: Broker) -> None:
    await broker.enqueue([job(), job()])
    consumer = await open_consumer(broker, lease=60.0)
    try:
        first, second = await fetch_all(consumer, 2)
        assert await consumer.ack([first, first]) == [True, False]
        await consumer.release([second, second])
        [again] = await fetch_all(consumer, 1, within=5.0)
        assert again.job_id == second.job_id
        assert await consumer.fetch(1, 0.5) == [], "released once, delivered once"
        assert await consumer.ack([again]) == [True]
    finally:
        await consumer.close()
    assert (await broker.stats(Q)).in_flight == 0


async def test_expired_lease_is_redelivered_with_raised_count(broker: Broker) -> None:
    expiring(broker)
    await broker.enqueue([job()])
    short = await open_consumer(broker, lease=0.5)
    other = await open_consumer(broker)
    try:
        [first] = await fetch_all(short, 1)
        [second] = await fetch_all(other, 1, within=5.0)
        assert second.job_id == first.job_id
        assert second.delivery_count == first.delivery_count + 1
        assert await short.ack([first]) == [False], "a stale token must not ack"
        assert await short.extend([first]) == [False], "a stale token must not extend"
        assert await other.ack([second]) == [True]
    finally:
        await short.close()
        await other.close()


async def test_a_lost_lease_frees_its_prefetch_slot(broker: Broker) -> None:
    expiring(broker)
    await broker.enqueue([job()])
    holder = await open_consumer(broker, lease=0.5, prefetch=1)
    thief = await open_consumer(broker)
    try:
        [first] = await fetch_all(holder, 1)
        [stolen] = await fetch_all(thief, 1, within=5.0)
        assert stolen.job_id == first.job_id
        assert await holder.extend([first]) == [False]
        later = job()
        await broker.enqueue([later])
        [second] = await fetch_all(holder, 1, within=5.0)
        assert second.job_id == later.id, "the lost lease must not keep the only slot taken"
        assert await holder.ack([second]) == [True]
        assert await thief.ack([stolen]) == [True]
    finally:
        await holder.close()
        await thief.close()


async def test_extended_lease_outlives_its_first_deadline(broker: Broker) -> None:
    expiring(broker)
    await broker.enqueue([job()])
    holder, other = await open_consumer(broker, lease=0.6), await open_consumer(broker)
    try:
        [delivery] = await fetch_all(holder, 1)
        for _ in range(5):  # 1.5 s in all, far past the 0.6 s lease
            await anyio.sleep(0.3)
            assert await holder.extend([delivery]) == [True]
            assert await other.fetch(1, 0.0) == []
        assert await holder.ack([delivery]) == [True]
    finally:
        await holder.close()
        await other.close()


async def test_extend_reports_each_lease_separately(broker: Broker) -> None:
    await broker.enqueue([job(), job()])
    consumer = await open_consumer(broker)
    try:
        got = await fetch_all(consumer, 2)
        assert await consumer.ack([got[0]]) == [True]
        assert await consumer.extend(got) == [False, True]
    finally:
        await consumer.close()


async def test_retry_replaces_job_with_next_body_after_delay(broker: Broker) -> None:
    await broker.enqueue([job()])
    consumer = await open_consumer(broker)
    try:
        [delivery] = await fetch_all(consumer, 1)
        assert await consumer.retry(delivery, b'{"v":1,"id":"x","task":"t","attempt":2}', wall_time() + 1.0)
        assert await consumer.fetch(1, 0.3) == []
        [again] = await fetch_all(consumer, 1, within=8.0)
        assert again.body == b'{"v":1,"id":"x","task":"t","attempt":2}'
        assert again.delivery_count == 1
        assert await consumer.ack([delivery]) == [False]
        assert await consumer.retry(delivery, b"{}", None) is False
    finally:
        await consumer.close()


async def test_delayed_job_is_not_ready_before_its_time(broker: Broker) -> None:
    await broker.enqueue([job(not_before=wall_time() + 1.2)])
    consumer = await open_consumer(broker)
    try:
        assert await consumer.fetch(1, 0.4) == []
        assert (await broker.stats(Q)).scheduled == 1
        assert len(await fetch_all(consumer, 1, within=8.0)) == 1
    finally:
        await consumer.close()


async def test_dead_letter_keeps_malformed_body_intact_and_can_be_replayed(broker: Broker) -> None:
    raw = b"\xff\x00 not json at all"
    await broker.enqueue([job(raw)])
    consumer = await open_consumer(broker)
    try:
        [delivery] = await fetch_all(consumer, 1)
        assert delivery.body == raw
        info = DeadLetterInfo("malformed", "EnvelopeError", "not JSON", attempts=1, failed_at=wall_time())
        assert await consumer.dead_letter(delivery, info)
        assert await consumer.ack([delivery]) == [False]
        [dead] = await broker.list_dead(Q)
        assert dead.body == raw
        assert dead.info.reason == "malformed"
        assert dead.info.error_type == "EnvelopeError"
        assert (await broker.get_dead(Q, dead.id)) == dead
        assert (await broker.stats(Q)).dead == 1
        assert await broker.replay_dead(Q, dead.id, raw)
        assert await broker.list_dead(Q) == []
        [again] = await fetch_all(consumer, 1, within=5.0)
        assert again.body == raw
    finally:
        await consumer.close()


async def test_purge_dead_deletes_given_or_all(broker: Broker) -> None:
    await broker.enqueue([job() for _ in range(3)])
    consumer = await open_consumer(broker)
    try:
        for delivery in await fetch_all(consumer, 3):
            assert await consumer.dead_letter(delivery, DeadLetterInfo("permanent", "PermanentError", "no"))
        dead = await broker.list_dead(Q)
        assert len(dead) == 3
        assert await broker.purge_dead(Q, [dead[0].id]) == 1
        assert len(await broker.list_dead(Q)) == 2
        assert await broker.purge_dead(Q) == 2
        assert await broker.list_dead(Q) == []
    finally:
        await consumer.close()


async def test_unique_key_blocks_a_second_enqueue(broker: Broker) -> None:
    if not broker.supports_unique:
        pytest.skip("this broker leaves enqueue-time dedupe to the runtime's store")
    first, second, other = job(key="k1"), job(key="k1"), job(key="k2")
    assert await broker.enqueue([first]) == [True]
    assert await broker.enqueue([second, other]) == [False, True]
    assert (await broker.stats(Q)).ready == 2


async def test_stats_count_ready_in_flight_and_scheduled(broker: Broker) -> None:
    await broker.enqueue([job(), job(), job(not_before=wall_time() + 30)])
    await anyio.sleep(0.2)
    stats = await broker.stats(Q)
    assert (stats.ready, stats.scheduled) == (2, 1)
    consumer = await open_consumer(broker)
    try:
        got = await fetch_all(consumer, 1)
        assert len(got) == 1
        stats = await broker.stats(Q)
        assert stats.ready == 1
    finally:
        await consumer.close()


async def test_consumer_reads_only_its_queues(broker: Broker) -> None:
    await broker.enqueue([job(queue="other-q")])
    mine = await open_consumer(broker)
    theirs = await open_consumer(broker, queues=("other-q",))
    try:
        assert await mine.fetch(1, 0.3) == []
        [delivery] = await fetch_all(theirs, 1)
        assert delivery.queue == "other-q"
    finally:
        await mine.close()
        await theirs.close()


async def test_a_backlog_in_one_queue_does_not_starve_another(broker: Broker) -> None:
    """A consumer of several queues serves them all: jobs of a quiet queue are not stuck behind a busy one."""
    busy = [job(queue="busy") for _ in range(200)]
    quiet = [job(queue="quiet") for _ in range(5)]
    assert await broker.enqueue(busy) == [True] * 200
    assert await broker.enqueue(quiet) == [True] * 5
    consumer = await open_consumer(broker, prefetch=10, queues=("busy", "quiet"))
    try:
        waiting = {j.id for j in quiet}
        busy_before = 0
        deadline = monotonic() + 15
        while waiting and monotonic() < deadline:
            got = await consumer.fetch(10, 0.5)
            assert all(await consumer.ack(got))
            busy_before += sum(d.queue == "busy" for d in got)
            waiting -= {d.job_id for d in got}
        assert not waiting, "the quiet queue's jobs never came"
        assert busy_before <= 50, f"{busy_before} jobs of the busy queue were served before the quiet queue's 5"
    finally:
        await consumer.close()

"""RabbitMQ-specific guarantees beyond the contract: counts, adoption, delays, declarations, errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from asyncjobs_rabbitmq import RabbitBroker, RabbitConsumer, RabbitOptions, ServerInfo, wire
from asyncjobs_rabbitmq.leases import AckWindow
from asyncjobs_rabbitmq.publisher import publish_many
from asyncjobs_rabbitmq.topology import BUCKETS_MS, Names, bucket_for, consumer_arguments, work_arguments

from asyncjobs.broker import DeadLetterInfo, OutgoingJob
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.errors import BrokerError, BrokerURLError, ConfigError
from tests.harness import require_server
from tests.harness.rabbitmq import URL, rabbitmq_harness

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]
Q = "jobs"


def job(queue: str = Q, not_before: float | None = None) -> OutgoingJob:
    job_id = uuid.uuid4().hex
    return OutgoingJob(job_id, queue, f'{{"v":1,"id":"{job_id}","task":"t"}}'.encode(), not_before)


@pytest.fixture(params=["quorum", "classic"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RabbitBroker]:
    require_server("rabbitmq")
    async with rabbitmq_harness(f"b{uuid.uuid4().hex[:10]}", request.param) as connected:
        assert isinstance(connected, RabbitBroker)
        yield connected


async def fetch_one(consumer: RabbitConsumer, within: float = 5.0) -> list:  # type: ignore[type-arg]
    deadline = monotonic() + within
    while monotonic() < deadline:
        got = await consumer.fetch(1, 0.2)
        if got:
            return got
    return []


# -- pure parts ---------------------------------------------------------------------------------


def test_bucket_is_the_largest_not_longer_than_the_delay_so_a_job_is_never_early() -> None:
    assert bucket_for(0.0) is None
    assert bucket_for(0.1) is None, "shorter than the smallest bucket: held by the consumer"
    assert bucket_for(0.25) == 250
    assert bucket_for(1.2) == 1000
    assert bucket_for(3.99) == 1000
    assert bucket_for(4.0) == 4000
    assert bucket_for(10**6) == BUCKETS_MS[-1]
    for remaining in (0.3, 0.9, 2.5, 17.0, 700.0):
        ms = bucket_for(remaining)
        assert ms is not None and ms <= remaining * 1000


def test_a_due_header_that_is_no_time_means_due_now() -> None:
    assert wire.due_of({wire.DUE: 1_500}) == 1.5
    for odd in (float("nan"), float("inf"), True, "soon", None):
        assert wire.due_of({wire.DUE: odd}) is None


def test_url_options_are_parsed_and_bad_values_refused() -> None:
    options = RabbitOptions.from_url("amqp://u:p@h:5672/vh?queue_type=classic&queue_prefix=app.&heartbeat=30")
    assert (options.queue_type, options.queue_prefix) == ("classic", "app.")
    assert options.amqp_url == "amqp://u:p@h:5672/vh?heartbeat=30&reconnect_interval=1"
    assert RabbitOptions.from_url("amqp://h/").queue_type == "quorum"
    with pytest.raises(BrokerURLError, match="queue_type"):
        RabbitOptions.from_url("amqp://h/?queue_type=stream")
    with pytest.raises(BrokerURLError, match="consumer_timeout"):
        RabbitOptions.from_url("amqp://h/?consumer_timeout=soon")


def test_server_features_follow_the_reported_version() -> None:
    old = ServerInfo.from_properties({"version": b"3.10.8", "product": b"RabbitMQ"})
    assert old.version == (3, 10, 8)
    assert not old.consumer_timeout_argument
    assert old.quorum_default_delivery_limit is None
    assert old.quorum_delays
    assert not ServerInfo.from_properties({"version": "3.9.29"}).quorum_delays
    assert ServerInfo.from_properties({"version": "3.12.1"}).consumer_timeout_argument
    assert ServerInfo.from_properties({"version": "4.0.2"}).quorum_default_delivery_limit == 20
    assert ServerInfo.from_properties(None).version == (0, 0, 0)


# -- on the server ------------------------------------------------------------------------------


async def test_server_version_is_read_at_connect(broker: RabbitBroker) -> None:
    assert broker.server.version >= (3, 8, 0)


async def test_conflicting_queue_declaration_names_the_queue_and_argument() -> None:
    require_server("rabbitmq")
    prefix = f"c{uuid.uuid4().hex[:10]}."
    async with rabbitmq_harness(prefix.rstrip("."), "classic") as classic:
        await classic.enqueue([job()])
        other = RabbitBroker(f"{URL}?queue_type=quorum&queue_prefix={prefix}")
        await other.connect()
        try:
            with pytest.raises(ConfigError, match=rf"'{prefix}{Q}'.*inequivalent arg 'x-"):
                await other.enqueue([job()])
        finally:
            await other.close()


async def test_unroutable_publish_raises_instead_of_dropping(broker: RabbitBroker) -> None:
    with pytest.raises(BrokerError, match="returned unroutable"):
        await broker.publish([(f"no-such-queue-{uuid.uuid4().hex}", b"x", wire.properties("x"))])


async def test_one_write_batch_fails_exactly_the_unroutable_messages(broker: RabbitBroker) -> None:
    """The batched publisher maps each confirm and each return to its own message."""
    work = (await broker.topology.ensure(Q)).work
    missing = f"no-such-queue-{uuid.uuid4().hex}"
    keys = [missing if i % 7 == 3 else work for i in range(50)]
    channel = await broker._publisher.get_underlay_channel()  # type: ignore[union-attr]
    results = await publish_many(
        channel, [(key, b"x%d" % i, wire.properties(uuid.uuid4().hex)) for i, key in enumerate(keys)]
    )
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [i for i, key in enumerate(keys) if key == missing]
    assert all(type(results[i]).__name__ == "PublishError" for i in failed)
    assert (await broker.stats(Q)).ready == 50 - len(failed)
    assert not channel.message_id_delivery_tag, "no bookkeeping left behind per message"


async def test_many_batches_at_once_wait_for_the_writer_and_all_arrive(broker: RabbitBroker) -> None:
    """The channel's writer queue is bounded (10 frames): a burst of batches waits for room."""
    work = (await broker.topology.ensure(Q)).work
    channel = await broker._publisher.get_underlay_channel()  # type: ignore[union-attr]
    batches = [[(work, b"x", wire.properties(uuid.uuid4().hex)) for _ in range(20)] for _ in range(30)]
    results = await asyncio.gather(*(publish_many(channel, batch) for batch in batches))
    assert not [r for batch in results for r in batch if isinstance(r, BaseException)]
    assert (await broker.stats(Q)).ready == 600


async def test_bodies_larger_than_a_frame_arrive_whole(broker: RabbitBroker) -> None:
    channel = await broker._publisher.get_underlay_channel()  # type: ignore[union-attr]
    size = channel.max_content_size * 2 + 123
    body = bytes(range(256)) * (size // 256) + b"end"
    job_id = uuid.uuid4().hex
    doc = f'{{"v":1,"id":"{job_id}","task":"t","pad":"'.encode() + body.hex().encode() + b'"}'
    await broker.enqueue([OutgoingJob(job_id, Q, doc, None), job()])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    got = []
    deadline = monotonic() + 10
    while len(got) < 2 and monotonic() < deadline:
        got += await consumer.fetch(2, 0.2)
    assert [d.body for d in got if d.job_id == job_id] == [doc]
    await consumer.close()


async def test_publishing_after_the_publisher_channel_closed_opens_another(broker: RabbitBroker) -> None:
    """The server closes the publishing channel on some errors (an oversize message): the next enqueue goes through."""
    channel = await broker._publisher.get_underlay_channel()  # type: ignore[union-attr]
    await channel.close()
    assert await broker.enqueue([job()]) == [True]
    assert (await broker.stats(Q)).ready == 1


async def test_large_batch_is_confirmed_before_enqueue_returns(broker: RabbitBroker) -> None:
    assert await broker.enqueue([job() for _ in range(2000)]) == [True] * 2000
    assert (await broker.stats(Q)).ready == 2000


async def test_each_crash_raises_the_delivery_count(broker: RabbitBroker) -> None:
    await broker.enqueue([job()])
    counts = []
    for _ in range(3):  # a consumer that dies holding the job: its connection goes away, no ack
        crashing = RabbitBroker(broker.url)
        await crashing.connect()
        consumer = await crashing.consumer([Q], prefetch=5, lease_seconds=30)
        [delivery] = await fetch_one(consumer)
        counts.append(delivery.delivery_count)
        await crashing.close()
    assert counts == [1, 2, 3]


async def test_released_job_comes_back_without_counting_a_delivery(broker: RabbitBroker) -> None:
    await broker.enqueue([job()])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        [delivery] = await fetch_one(consumer)
        await consumer.release([delivery])
        [again] = await fetch_one(consumer)
        assert (again.job_id, again.delivery_count) == (delivery.job_id, 1)
    finally:
        await consumer.close()


async def test_lease_is_lost_when_its_channel_closes(broker: RabbitBroker) -> None:
    await broker.enqueue([job()])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        [delivery] = await fetch_one(consumer)
        channel = delivery.handle.channel
        await channel.close()
        assert await consumer.extend([delivery]) == [False]
        assert await consumer.ack([delivery]) == [False], "a delivery of a dead channel is never acked"
        [again] = await fetch_one(consumer)
        assert again.job_id == delivery.job_id
        assert again.delivery_count == 2
        assert await consumer.ack([again]) == [True]
    finally:
        await consumer.close()


async def test_redelivery_of_a_job_still_held_here_is_adopted_not_handed_out_again(broker: RabbitBroker) -> None:
    await broker.enqueue([job()])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        [delivery] = await fetch_one(consumer)
        old_token = delivery.token
        await delivery.handle.channel.close()
        await anyio.sleep(1.0)  # the channel reopens and the job comes back to this consumer
        assert await consumer.fetch(1, 0.3) == [], "the running job is not handed out twice"
        assert delivery.token != old_token
        assert await consumer.extend([delivery]) == [True]
        assert await consumer.ack([delivery]) == [True]
        assert (await broker.stats(Q)).ready == 0
    finally:
        await consumer.close()
    assert (await broker.stats(Q)).ready == 0, "the adopted delivery was acked, not given back"


async def test_an_ack_racing_its_channel_close_is_not_an_error_and_the_job_is_not_run_again(
    broker: RabbitBroker,
) -> None:
    """aiormq refuses an ack once the close of its channel has begun, before the channel reports is_closed."""
    await broker.enqueue([job()])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        [delivery] = await fetch_one(consumer)
        channel = delivery.handle.channel
        await channel.basic_ack(10**6)  # an unknown tag: RabbitMQ closes the channel, as consumer_timeout does
        close_begun = channel._Channel__close_event  # set when the server's Channel.Close has been read
        with anyio.fail_after(5):
            await close_begun.wait()
        assert not channel.is_closed, "the window this test is about: closing, not closed yet"
        assert await consumer.ack([delivery]) == [True], "acked when its redelivery comes back here"
        assert await consumer.fetch(1, 2.0) == [], "the finished job is not handed out again"
        assert (await broker.stats(Q)).ready == 0
    finally:
        await consumer.close()
    assert (await broker.stats(Q)).ready == 0


@pytest.mark.parametrize("delay", [0.15, 1.6])  # held by the consumer; 1 s bucket, 0.25 s bucket, held
async def test_delayed_job_crosses_buckets_and_is_never_early(broker: RabbitBroker, delay: float) -> None:
    due = wall_time() + delay
    await broker.enqueue([job(not_before=due)])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        [delivery] = await fetch_one(consumer, within=6.0)
        arrived = wall_time()
        assert due <= arrived < due + 0.5
        assert delivery.delivery_count == 1
    finally:
        await consumer.close()


async def test_dead_letters_are_browsed_without_being_removed(broker: RabbitBroker) -> None:
    await broker.enqueue([job() for _ in range(3)])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        ids = []
        for n in range(3):
            [delivery] = await fetch_one(consumer)
            info = DeadLetterInfo("permanent", "ValueError", f"bad {n}", attempts=n + 1, history=({"attempt": 1},))
            assert await consumer.dead_letter(delivery, info)
            ids.append(delivery.job_id)
        first = await broker.list_dead(Q)
        assert [d.id for d in first] == list(reversed(ids))
        assert await broker.list_dead(Q) == first
        assert await broker.list_dead(Q, limit=1) == first[:1]
        assert first[2].info == DeadLetterInfo(
            "permanent", "ValueError", "bad 0", attempts=1, history=({"attempt": 1},)
        )
        assert await broker.purge_dead(Q, [ids[1]]) == 1
        assert [d.id for d in await broker.list_dead(Q)] == [ids[2], ids[0]]
        assert await broker.get_dead(Q, ids[1]) is None
        assert await broker.replay_dead(Q, ids[1], b"{}") is False
    finally:
        await consumer.close()


async def test_retry_publishes_the_next_body_before_acking(broker: RabbitBroker) -> None:
    await broker.enqueue([job()])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        [delivery] = await fetch_one(consumer)
        assert await consumer.retry(delivery, b'{"v":1,"id":"n","task":"t","attempt":2}', wall_time() + 0.3)
        stats = await broker.stats(Q)
        assert (stats.ready, stats.scheduled) == (0, 1)
        [again] = await fetch_one(consumer)
        assert again.body.endswith(b'"attempt":2}')
    finally:
        await consumer.close()


async def test_many_delayed_jobs_hop_buckets_together_and_none_is_early(broker: RabbitBroker) -> None:
    due = wall_time() + 0.6  # 0.25 s bucket three times: two re-bucketings of all 300 at once
    sent = [job(not_before=due) for _ in range(300)]
    await broker.enqueue(sent)
    consumer = await broker.consumer([Q], prefetch=400, lease_seconds=30)
    try:
        got: list[str | None] = []
        deadline = monotonic() + 30.0  # bucket expiry on a loaded server can lag; late is allowed, lost or early is not
        while len(got) < len(sent) and monotonic() < deadline:
            batch = await consumer.fetch(400, 0.3)
            assert wall_time() >= due or not batch, "a delayed job came out early"
            got += [d.job_id for d in batch]
            assert all(await consumer.ack(batch))
        missing = {j.id for j in sent} - set(got)
        assert not missing, f"{len(missing)} delayed jobs not delivered in 30 s; stats: {await broker.stats(Q)}"
        assert sorted(g or "" for g in got) == sorted(j.id for j in sent)
    finally:
        await consumer.close()
    stats = await broker.stats(Q)
    assert (stats.ready, stats.scheduled) == (0, 0)


def test_ack_window_acks_a_finished_run_with_one_frame_and_the_rest_one_by_one() -> None:
    window = AckWindow()
    for tag in [1, 2, 3, 4, 5, 6, 7]:
        window.arrived(tag)
    assert window.settle([2, 4]) == (None, [2, 4]), "1 still runs: no multiple ack may cover it"
    assert window.settle([1]) == (1, []), "2 was acked already: a multiple ack naming it is an unknown tag"
    assert window.settle([3, 5]) == (5, []), "3, the acked 4 and 5: one frame naming 5"
    window.sent([7])  # acked one by one elsewhere
    assert window.settle([6]) == (6, [])
    assert not window.unacked


def test_ack_window_never_names_a_tag_twice() -> None:
    """Whatever order jobs finish in: every frame names an unacked tag, covers only finished jobs, and all end acked."""
    import random

    rng = random.Random(7)
    for _ in range(200):
        window = AckWindow()
        tags = list(range(1, 31))
        for tag in tags:
            window.arrived(tag)
        left = tags[:]
        rng.shuffle(left)
        finished: set[int] = set()
        outstanding = set(tags)  # not acked on the wire yet
        while left:
            k = rng.randint(1, 4)
            batch, left = left[:k], left[k:]
            finished.update(batch)
            last, singles = window.settle(batch)
            for tag in singles:
                assert tag in outstanding, f"tag {tag} acked twice"
                outstanding.discard(tag)
            if last is not None:
                assert last in outstanding, f"a multiple ack names {last}, which is acked already"
                run = {t for t in outstanding if t <= last}
                assert run <= finished, f"a multiple ack up to {last} covers unfinished {sorted(run - finished)}"
                outstanding -= run
        assert not outstanding, f"never acked: {sorted(outstanding)}"


async def test_redelivery_of_a_job_whose_ack_was_lost_is_acked_not_run_again(broker: RabbitBroker) -> None:
    await broker.enqueue([job()])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        [delivery] = await fetch_one(consumer)
        # An ack the server never read: as if written just before the channel closed.
        delivery.handle.settled = True
        consumer.adoption.forget(delivery)
        consumer.adoption.sent(delivery.handle)
        await delivery.handle.channel.close()
        await anyio.sleep(1.0)  # the channel reopens and the job comes back
        assert await consumer.fetch(1, 0.3) == [], "a finished job is not run again"
    finally:
        await consumer.close()
    assert (await broker.stats(Q)).ready == 0, "the redelivery was acked"


async def test_a_moved_delayed_job_is_not_taken_for_its_acked_original_when_the_channel_closes(
    broker: RabbitBroker,
) -> None:
    """A re-bucketed copy has the body of the original whose ack was sent: it must still run.

    The job comes back from the 0.25 s bucket not yet due and is moved into it again (the original
    acked); the copy comes back with 0.1 s to go and is held here. Then the channel closes: the
    copy returns redelivered, like an original whose ack was lost, and must not be acked unrun.
    """
    sent = job(not_before=wall_time() + 0.6)
    await broker.enqueue([sent])
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        with anyio.fail_after(10):
            while not consumer.inbox.held:
                assert await consumer.fetch(1, 0.02) == []
        assert consumer.adoption.sizes()["sent"] == 1, "the original was moved, and its ack sent on this channel"
        [(_, held)] = consumer.inbox.drain()
        consumer.inbox.hold(0.0, Q, held)
        await held.channel.close()
        got = await fetch_one(consumer, within=10.0)
        assert [d.job_id for d in got] == [sent.id], "the job was lost"
    finally:
        await consumer.close()


def test_consumers_get_a_consumer_timeout_only_where_the_server_takes_it() -> None:
    options = RabbitOptions.from_url("amqp://h/?consumer_timeout=7200")
    old, new = (ServerInfo.from_properties({"version": v}) for v in ("3.11.14", "3.11.15"))
    assert consumer_arguments(options, old) == {}
    assert consumer_arguments(options, new) == {"x-consumer-timeout": 7_200_000}
    args = work_arguments(options, Names("", "jobs"))
    assert "x-consumer-timeout" not in args, "a queue argument would conflict when the option changes"
    assert args["x-dead-letter-routing-key"] == "jobs.dead", "whatever the server dead-letters is kept"
    assert args["x-dead-letter-strategy"] == "at-least-once"


async def test_a_queue_deleted_under_a_running_app_is_declared_and_consumed_again(broker: RabbitBroker) -> None:
    consumer = await broker.consumer([Q], prefetch=5, lease_seconds=30)
    try:
        await broker.enqueue([job()])
        [first] = await fetch_one(consumer)
        assert await consumer.ack([first]) == [True]
        work = broker.topology.names(Q).work
        other = await broker.connection.channel()
        await other.queue_delete(work)
        await other.close()
        await anyio.sleep(0.5)  # the server cancels the consumers of the deleted queue
        later = job()
        assert await broker.enqueue([later]) == [True], "the producer declares the queue again"
        [second] = await fetch_one(consumer, within=5.0)
        assert second.job_id == later.id, "the consumer consumes the new queue"
        assert await consumer.ack([second]) == [True]
    finally:
        await consumer.close()

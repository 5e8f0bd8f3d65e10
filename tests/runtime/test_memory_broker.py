"""Promises of the in-memory broker beyond the contract suite: dead letters, unique keys, bounded memory."""

from __future__ import annotations

import uuid

import anyio
import pytest

from asyncjobs.broker import COMES_BACK, DeadLetterInfo, OutgoingJob, comes_back
from asyncjobs.errors import BrokerURLError, QueueFullError
from asyncjobs.memory import MAX_JOBS, MemoryBroker

pytestmark = pytest.mark.anyio


def outgoing(job_id: str, key: str | None = None, ttl: float = 30.0) -> OutgoingJob:
    body = f'{{"v":1,"id":"{job_id}","task":"t"}}'.encode()
    return OutgoingJob(job_id, "q", body, unique_key=key, unique_ttl=ttl if key else 0.0)


def info(reason: str) -> DeadLetterInfo:
    return DeadLetterInfo(reason=reason, error_type="E", error_message=reason)


async def test_a_job_id_dead_lettered_twice_keeps_both_dead_letters() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    await broker.enqueue([outgoing("same"), outgoing("same")])  # a producer that reuses an id
    first, second = await consumer.fetch(2, 0.5)
    assert await consumer.dead_letter(first, info("first"))
    assert await consumer.dead_letter(second, info("second"))
    dead = await broker.list_dead("q")
    assert [d.info.reason for d in dead] == ["second", "first"]
    assert len({d.id for d in dead}) == 2
    for d in dead:
        assert await broker.get_dead("q", d.id) == d
    newest = await broker.get_dead("q", "same")
    assert newest is not None
    assert newest.info.reason == "first", "the first dead letter of a job keeps its plain id"
    assert await broker.purge_dead("q", [d.id for d in dead]) == 2


async def test_a_dead_lettered_job_frees_its_unique_key_for_a_new_enqueue() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    assert await broker.enqueue([outgoing("a", key="welcome-1")]) == [True]
    assert await broker.enqueue([outgoing("b", key="welcome-1")]) == [False], "pending: refused"
    [delivery] = await consumer.fetch(1, 0.5)
    assert await consumer.retry(delivery, delivery.body, None)  # the retry keeps holding the key
    assert await broker.enqueue([outgoing("c", key="welcome-1")]) == [False]
    [delivery] = await consumer.fetch(1, 0.5)
    assert await consumer.dead_letter(delivery, info("gave up"))
    assert await broker.enqueue([outgoing("d", key="welcome-1")]) == [True], "a dead key may be enqueued again"


async def test_expired_unique_keys_do_not_stay_in_memory() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    await broker.enqueue([outgoing(f"j{i}", key=f"k{i}", ttl=0.05) for i in range(20_000)])
    assert len(broker._unique) == 20_000
    await anyio.sleep(0.1)
    await broker.enqueue([outgoing("last", key="last", ttl=30)])
    assert len(broker._unique) == 1


async def test_a_full_memory_broker_refuses_the_whole_batch_with_a_clear_error() -> None:
    broker = MemoryBroker.from_url(f"memory://{uuid.uuid4().hex}?max_jobs=5")
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    assert await broker.enqueue([outgoing(f"j{i}") for i in range(4)]) == [True] * 4
    with pytest.raises(QueueFullError, match=r"max_jobs=5.*nothing of this batch was stored"):
        await broker.enqueue([outgoing("x"), outgoing("y")])
    assert (await broker.stats("q")).ready == 4, "a refused batch stores nothing"
    assert await broker.enqueue([outgoing("j4")]) == [True]
    # Dead letters count too; settling frees room, purging dead letters frees theirs.
    first, *rest = await consumer.fetch(5, 0.5)
    assert await consumer.dead_letter(first, info("bad"))
    with pytest.raises(QueueFullError):
        await broker.enqueue([outgoing("z")])
    assert await consumer.ack(rest) == [True] * 4
    assert await broker.enqueue([outgoing(f"k{i}") for i in range(4)]) == [True] * 4
    with pytest.raises(QueueFullError):
        await broker.enqueue([outgoing("z")])
    assert await broker.purge_dead("q") == 1
    assert await broker.enqueue([outgoing("z")]) == [True]


async def test_a_memory_broker_bounds_the_bytes_it_holds() -> None:
    broker = MemoryBroker.from_url(f"memory://{uuid.uuid4().hex}?max_bytes=1000")
    body = b"x" * 400
    assert await broker.enqueue([OutgoingJob("a", "q", body), OutgoingJob("b", "q", body)]) == [True, True]
    with pytest.raises(QueueFullError, match="max_bytes=1000"):
        await broker.enqueue([OutgoingJob("c", "q", body)])
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    a, _b = await consumer.fetch(2, 0.5)
    assert await consumer.retry(a, body, None), "a retry replaces its job: never refused"
    assert await consumer.ack(await consumer.fetch(1, 0.5)) == [True]
    assert await broker.enqueue([OutgoingJob("c", "q", body)]) == [True]


@pytest.mark.parametrize(
    ("query", "message"),
    [("max_jobs=zero", "whole number"), ("max_job=5", "no option 'max_job'"), ("max_bytes=0", "whole number")],
)
def test_bad_memory_url_options_are_errors(query: str, message: str) -> None:
    with pytest.raises(BrokerURLError, match=message):
        MemoryBroker.from_url(f"memory://{uuid.uuid4().hex}?{query}")


async def test_a_million_tiny_jobs_are_refused_by_default_long_before_memory_runs_out() -> None:
    broker = MemoryBroker.from_url(f"memory://{uuid.uuid4().hex}")
    batch = [outgoing(f"j{i}") for i in range(10_000)]
    for _ in range(MAX_JOBS // len(batch)):
        await broker.enqueue(batch)
    with pytest.raises(QueueFullError):
        await broker.enqueue(batch[:1])
    assert (await broker.stats("q")).ready == MAX_JOBS


async def test_a_settle_that_fails_is_logged_as_coming_back_when_its_lease_ends() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    consumer = await broker.consumer(["q"], prefetch=1, lease_seconds=30)
    try:
        assert comes_back(consumer) == COMES_BACK == "the broker delivers it again when its lease ends"
    finally:
        await consumer.close()

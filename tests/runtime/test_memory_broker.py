"""Promises of the in-memory broker beyond the contract suite: dead letters, unique keys, bounded memory."""

from __future__ import annotations

import uuid

import anyio
import pytest

from asyncjobs.broker import DeadLetterInfo, OutgoingJob
from asyncjobs.memory import MemoryBroker

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

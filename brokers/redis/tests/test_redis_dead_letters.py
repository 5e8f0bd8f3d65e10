"""Dead letters on redis://: a repeated job id keeps every letter, a dead job frees its unique key,
foreign producers' duplicates and unreadable bodies keep their names through a replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from asyncjobs_redis import RedisBroker
from redis.asyncio import Redis

from asyncjobs import App
from asyncjobs.broker import DeadLetterInfo, OutgoingJob
from tests.harness import require_server
from tests.harness.redis import REDIS_URL, delete_prefix
from tests.runtime.helpers import eventually, running

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

INFO = DeadLetterInfo("permanent", "PermanentError", "no")


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def broker() -> AsyncIterator[RedisBroker]:
    """A connected broker under a prefix of its own, deleted afterwards."""
    require_server("redis")
    prefix = f"rd{uuid.uuid4().hex[:10]}"
    connected = RedisBroker(f"{REDIS_URL}?prefix={prefix}")
    await connected.connect()
    try:
        yield connected
    finally:
        await connected.close()
        await delete_prefix(prefix)


@pytest.fixture
async def raw() -> AsyncIterator[Redis]:
    """A plain client: the foreign producer."""
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


def envelope(job_id: str, task: str = "t") -> bytes:
    return f'{{"v":1,"id":"{job_id}","task":"{task}"}}'.encode()


async def bury_all(broker: RedisBroker, count: int) -> None:
    consumer = await broker.consumer(["q"], prefetch=count, lease_seconds=30)
    got = await consumer.fetch(count, 1.0)
    assert len(got) == count
    for delivery in got:
        assert await consumer.dead_letter(delivery, INFO)
    await consumer.close()


async def test_a_job_id_dead_twice_keeps_both_letters(broker: RedisBroker) -> None:
    first, second = OutgoingJob("same", "q", envelope("same") + b" "), OutgoingJob("same", "q", envelope("same"))
    await broker.enqueue([first, second])
    await bury_all(broker, 2)
    letters = await broker.list_dead("q")
    assert len(letters) == 2, "2 dead-lettered, 2 kept"
    repeat, plain = letters
    assert plain.id == "same" and plain.body == first.body
    assert repeat.id.startswith("same.") and repeat.body == second.body
    assert (await broker.stats("q")).dead == 2
    found = await broker.get_dead("q", "same")
    assert found is not None and found.body == first.body
    assert await broker.purge_dead("q", ["same"]) == 1
    newest = await broker.get_dead("q", "same")
    assert newest is not None and newest.id == repeat.id, "a plain id finds the newest ID.N"
    assert await broker.replay_dead("q", repeat.id, repeat.body)
    await bury_all(broker, 1)
    [again] = await broker.list_dead("q")
    assert again.id == "same", "replayed and dead again: the plain id is free"


async def test_a_dead_jobs_unique_key_may_be_enqueued_again(broker: RedisBroker) -> None:
    def keyed(job_id: str) -> OutgoingJob:
        return OutgoingJob(job_id, "q", envelope(job_id), unique_key="k", unique_ttl=60)

    assert await broker.enqueue([keyed("a"), keyed("b")]) == [True, False]
    await bury_all(broker, 1)
    assert await broker.enqueue([keyed("c")]) == [True], "the dead job's key is free"
    consumer = await broker.consumer(["q"], prefetch=1, lease_seconds=30)
    done = await consumer.fetch(1, 1.0)
    assert await consumer.ack(done) == [True]
    assert await broker.enqueue([keyed("d")]) == [False], "a done job's key holds for its TTL"
    await consumer.close()


async def test_a_foreign_producers_duplicate_ids_keep_both_dead_letters(broker: RedisBroker, raw: Redis) -> None:
    keys = broker.keys("default")
    bodies = {b"dup|a": envelope("dup", "nobody.a"), b"dup|b": envelope("dup", "nobody.b")}
    async with raw.pipeline(transaction=True) as pipe:
        for handle, body in bodies.items():
            pipe.hset(keys.job[3], handle, body)
            pipe.rpush(keys.job[0], handle)
        await pipe.execute()
    app = App(broker)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 2)
    letters = await broker.list_dead("default")
    assert sorted(d.body for d in letters) == sorted(bodies.values()), "both kept, bytes intact"
    assert {d.info.reason for d in letters} == {"unknown_task"}
    assert sorted(d.id for d in letters)[0] == "dup"


async def test_a_replayed_unreadable_dead_letter_keeps_its_id(broker: RedisBroker, raw: Redis) -> None:
    keys = broker.keys("default")
    junk = b"\xff not json {"
    async with raw.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job[3], b"|x1", junk)
        pipe.rpush(keys.job[0], b"|x1")
        await pipe.execute()
    app = App(broker)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
        [first] = await broker.list_dead("default")
        assert first.info.reason == "malformed" and first.body == junk
        assert await broker.replay_dead("default", first.id, first.body)
        await eventually(lambda: worker.stats.dead == 2)
        [again] = await broker.list_dead("default")
    assert again.id == first.id, "not a new random id"
    assert again.body == junk

"""Jobs written by hand into Redis (``redis-cli``, a raw client) beside good ones.

Each hostile job has a place to go (the dead letters, bytes intact, with the reason), and never
holds up the good jobs fetched with it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from asyncjobs_redis import RedisBroker
from redis.asyncio import Redis

from asyncjobs import App
from asyncjobs.broker import OutgoingJob
from tests.harness import require_server
from tests.harness.redis import REDIS_URL, delete_prefix
from tests.runtime.helpers import eventually, running
from tests.servers.redis import redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def broker() -> AsyncIterator[RedisBroker]:
    """A connected broker under a prefix of its own, deleted afterwards."""
    require_server("redis")
    prefix = f"rh{uuid.uuid4().hex[:10]}"
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


def envelope(job_id: str, task: str = "good") -> bytes:
    return f'{{"v":1,"id":"{job_id}","task":"{task}"}}'.encode()


def envelope_with(job_id: str, payload: str) -> bytes:
    return json.dumps({"v": 1, "id": job_id, "task": "big", "args": [payload]}).encode()


def counting_app(broker: RedisBroker) -> tuple[App, list[str]]:
    app = App(broker)
    ran: list[str] = []

    @app.task(name="good")
    async def good() -> None:
        ran.append("good")

    return app, ran


async def push(raw: Redis, broker: RedisBroker, jobs: list[tuple[bytes, bytes | None]]) -> None:
    """Store each (handle, body) and push its handle, in one transaction (body ``None``: handle only)."""
    keys = broker.keys("default")
    async with raw.pipeline(transaction=True) as pipe:
        for handle, body in jobs:
            if body is not None:
                pipe.hset(keys.job[3], handle, body)
            pipe.rpush(keys.job[0], handle)
        pipe.rpush(keys.wake, 1)
        await pipe.execute()


async def test_a_handle_that_is_not_utf8_is_dead_lettered_and_its_batch_runs(broker: RedisBroker, raw: Redis) -> None:
    bad_handle, bad_body = b"\xff\xfe|x1", envelope("ok-body")
    await push(raw, broker, [(bad_handle, bad_body)] + [(f"g{i}|x".encode(), envelope(f"g{i}")) for i in range(3)])
    app, ran = counting_app(broker)
    async with running(app) as worker:
        await eventually(lambda: len(ran) == 3 and (worker.stats.done, worker.stats.dead) == (3, 1))
    [dead] = await broker.list_dead("default")
    assert dead.body == bad_body, "bytes intact"
    assert dead.info.reason == "malformed" and "not UTF-8" in dead.info.error_message
    assert dead.id == "\\xff\\xfe"
    stats = await broker.stats("default")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)


async def test_big_jobs_are_fetched_a_byte_budget_at_a_time_and_all_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mb = 1024 * 1024
    count, size = 10, 20 * mb
    with redis_server(workdir=tmp_path) as server:
        producer = RedisBroker(server.url)
        body = "x" * size
        await producer.enqueue(
            [OutgoingJob(f"big{i}", "default", envelope_with(f"big{i}", body)) for i in range(count)]
        )
        # One reply of all ten bodies (200 MB) takes longer than this socket timeout; one of 20 MB
        # (the default budget, 8 MiB, is passed with the first body) does not.
        app = App(RedisBroker(f"{server.url}?socket_timeout=1"), max_payload_bytes=64 * mb)  # these are allowed
        sizes: list[int] = []

        @app.task(name="big", max_attempts=1)  # a delivery whose reply was lost would dead-letter it
        async def big(payload: str) -> None:
            sizes.append(len(payload))

        try:
            async with running(app, concurrency=2, prefetch=count, lease_seconds=5) as worker:
                await eventually(lambda: worker.stats.done + worker.stats.dead >= count, within=60)
            dead = await producer.list_dead("default")
        finally:
            await producer.close()
    assert sizes == [size] * count, "all ten ran"
    assert not [r for r in caplog.records if "fetch failed" in r.getMessage()], "no fetch reply outlasted the timeout"
    assert (worker.stats.done, worker.stats.dead, dead) == (count, 0, [])


async def test_the_fetch_budget_counts_bytes_and_always_takes_one(broker: RedisBroker, raw: Redis) -> None:
    budgeted = RedisBroker(f"{REDIS_URL}?prefix={broker.prefix}&fetch_bytes=1000")
    assert budgeted.fetch_bytes == 1000
    await push(raw, broker, [(f"j{i}|x".encode(), b"x" * 400) for i in range(5)] + [(b"big|x", b"y" * 5000)])
    consumer = await budgeted.consumer(["default"], prefetch=10, lease_seconds=30)
    try:
        sizes = [[len(d.body) for d in await consumer.fetch(10, 0.0)] for _ in range(4)]
    finally:
        await consumer.close()
        await budgeted.close()
    assert sizes == [[400, 400], [400, 400], [400], [5000]]


async def test_a_handle_pushed_without_a_body_is_dead_lettered_as_missing_body(
    broker: RedisBroker, raw: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await push(raw, broker, [(b"lost|x1", None), (b"g1|x", envelope("g1")), (b"g2|x", envelope("g2"))])
    app, ran = counting_app(broker)
    async with running(app) as worker:
        await eventually(lambda: len(ran) == 2)
        with anyio.fail_after(10):
            while not (dead := await broker.list_dead("default")):  # noqa: ASYNC110 - polls the broker
                await anyio.sleep(0.05)
    [letter] = dead
    assert (letter.id, letter.body, letter.info.reason) == ("lost", b"", "missing_body")
    assert "lost|x1" in letter.info.error_message
    assert (worker.stats.done, worker.stats.dead) == (2, 1), "the worker counts the dead letter"
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, 1)
    assert any("missing_body" in r.getMessage() for r in caplog.records), "it is logged"


async def test_a_body_written_just_after_its_handle_still_runs(broker: RedisBroker, raw: Redis) -> None:
    app, ran = counting_app(broker)
    async with running(app) as worker:
        await push(raw, broker, [(b"late|x1", None)])  # two commands, no MULTI: the handle first
        await anyio.sleep(0.5)
        await raw.hset(broker.keys("default").job[3], b"late|x1", envelope("late"))
        await eventually(lambda: ran == ["good"])
    assert (worker.stats.done, worker.stats.dead) == (1, 0)
    assert await broker.list_dead("default") == []

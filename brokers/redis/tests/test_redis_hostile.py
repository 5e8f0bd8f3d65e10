"""Jobs written by hand into Redis (``redis-cli``, a raw client) beside good ones.

Each hostile job has a place to go (the dead letters, bytes intact, with the reason), and never
holds up the good jobs fetched with it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from asyncjobs_redis import RedisBroker
from redis.asyncio import Redis

from asyncjobs import App
from tests.harness import require_server
from tests.harness.redis import REDIS_URL, delete_prefix
from tests.runtime.helpers import eventually, running

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
        await pipe.execute()


async def test_a_handle_that_is_not_utf8_is_dead_lettered_and_its_batch_runs(broker: RedisBroker, raw: Redis) -> None:
    bad_handle, bad_body = b"\xff\xfe|x1", envelope("ok-body")
    await push(raw, broker, [(bad_handle, bad_body)] + [(f"g{i}|x".encode(), envelope(f"g{i}")) for i in range(3)])
    app, ran = counting_app(broker)
    async with running(app) as worker:
        await eventually(lambda: len(ran) == 3 and (worker.stats.done, worker.stats.dead) == (3, 0))
    [dead] = await broker.list_dead("default")
    assert dead.body == bad_body, "bytes intact"
    assert dead.info.reason == "malformed" and "not UTF-8" in dead.info.error_message
    assert dead.id == "\\xff\\xfe"
    stats = await broker.stats("default")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)

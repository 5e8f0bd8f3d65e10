"""Replies lost on the way back: a fetch or an ack that ran on the server, its answer cut off.

A reply is lost by sending the request through a loopback proxy slower than the client's socket
timeout: the request reaches Redis and the script runs, the client has given up by then. A fetch
retried after that gets the same deliveries back (no attempt is used up), an ack retried after
that is reported done. The end-to-end test runs a worker through a proxy that cuts every
connection every few tenths of a second.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from asyncjobs_redis import RedisBroker
from redis.asyncio import Redis

from asyncjobs import App
from asyncjobs.broker import OutgoingJob
from asyncjobs.errors import BrokerConnectionError
from tests.harness import require_server
from tests.harness.redis import REDIS_URL, delete_prefix
from tests.runtime.helpers import eventually, running
from tests.servers.proxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.fault]


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    require_server("redis")
    name = f"lost{uuid.uuid4().hex[:10]}"
    yield name
    await delete_prefix(name)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A proxy in front of the shared Redis server."""
    with tcp_proxy("127.0.0.1", 6379) as found:
        yield found


def jobs(n: int, queue: str = "q") -> list[OutgoingJob]:
    return [OutgoingJob(f"j{i}", queue, f'{{"v":1,"id":"j{i}"}}'.encode()) for i in range(n)]


async def in_flight(prefix: str, queue: str = "q") -> int:
    client = Redis.from_url(REDIS_URL)
    try:
        return int(await client.zcard(f"{{{prefix}:{queue}}}:leased"))
    finally:
        await client.aclose()


async def test_a_fetch_retried_after_its_reply_was_lost_gets_the_same_jobs_uncounted(
    prefix: str, proxy: TcpProxy
) -> None:
    direct = RedisBroker(f"{REDIS_URL}?prefix={prefix}")
    slow = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&socket_timeout=0.4")
    consumer = await slow.consumer(["q"], prefetch=10, lease_seconds=30)
    try:
        assert await consumer.fetch(5, 0.0) == []  # the script is loaded on the server now
        await direct.enqueue(jobs(5))
        proxy.delay = 0.5  # longer than the socket timeout: the script runs, its reply comes too late
        with pytest.raises(BrokerConnectionError):
            await consumer.fetch(5, 0.0)
        with anyio.fail_after(5):
            while await in_flight(prefix) < 5:  # noqa: ASYNC110 - polls the server
                await anyio.sleep(0.05)
        proxy.delay = 0.0
        got = await consumer.fetch(10, 0.0)
        assert sorted(d.job_id or "" for d in got) == [f"j{i}" for i in range(5)]
        assert [d.delivery_count for d in got] == [1] * 5, "the lost reply did not use up an attempt"
        assert await consumer.ack(got) == [True] * 5
        assert await in_flight(prefix) == 0
    finally:
        await consumer.close()
        await slow.close()
        await direct.close()


async def test_an_ack_retried_after_its_reply_was_lost_is_reported_done(prefix: str, proxy: TcpProxy) -> None:
    slow = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&socket_timeout=0.4")
    await slow.enqueue(jobs(4))
    consumer = await slow.consumer(["q"], prefetch=10, lease_seconds=30)
    try:
        first, *got = await consumer.fetch(4, 0.0)
        assert await consumer.ack([first]) == [True]  # the script is loaded on the server now
        proxy.delay = 0.5
        with pytest.raises(BrokerConnectionError):
            await consumer.ack(got)
        with anyio.fail_after(5):
            while await in_flight(prefix) > 0:  # noqa: ASYNC110 - polls the server
                await anyio.sleep(0.05)
        proxy.delay = 0.0
        assert await consumer.ack(got) == [True] * 3, "the same ack again: it went through"
        assert await consumer.ack(got) == [False] * 3, "a later, separate ack of settled jobs still fails"
    finally:
        await consumer.close()
        await slow.close()


async def test_a_worker_through_a_connection_cutting_proxy_runs_every_job_and_burns_no_attempt(
    prefix: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    n = 300
    producer = RedisBroker(f"{REDIS_URL}?prefix={prefix}")
    app = App(RedisBroker(f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"))
    runs: Counter[str] = Counter()

    @app.task(name="once", max_attempts=1)  # one attempt: a single burnt delivery dead-letters it
    async def once(i: int) -> None:
        runs[str(i)] += 1
        await anyio.sleep(0.005)

    await producer.enqueue(
        [OutgoingJob(str(i), "default", f'{{"v":1,"id":"{i}","task":"once","args":[{i}]}}'.encode()) for i in range(n)]
    )
    proxy.delay = 0.02
    stop = threading.Event()
    cuts = 0

    def cutter() -> None:
        nonlocal cuts
        while not stop.wait(0.4):
            cuts += bool(proxy.cut())

    thread = threading.Thread(target=cutter, daemon=True)
    caplog.set_level(logging.WARNING)
    try:
        async with running(app, concurrency=10, lease_seconds=3.0) as worker:
            thread.start()
            await eventually(lambda: len(runs) == n, within=40)
            stop.set()
            await eventually(lambda: worker.stats.done + worker.stats.dead >= n, within=30)
        dead = await producer.list_dead("default", limit=n)
        left = await producer.stats("default")
    finally:
        stop.set()
        thread.join(5)
        await producer.close()
    print(f"cuts={cuts} done={worker.stats.done} dead={len(dead)} ran_again={sum(c > 1 for c in runs.values())}")
    assert cuts >= 5, "the proxy cut connections while the jobs ran"
    assert set(runs) == {str(i) for i in range(n)}, "every job ran"
    assert [d.id for d in dead if d.id not in runs] == [], "none was dead-lettered (max_attempts) without running"
    assert worker.stats.done + len(dead) >= n
    assert (left.ready, left.scheduled, left.in_flight) == (0, 0, 0), "nothing left behind"
    said_again = [r.getMessage() for r in caplog.records if "it will run again" in r.getMessage()]
    ran_again = {i for i, count in runs.items() if count > 1}
    assert len(said_again) <= len(ran_again), f"logged 'it will run again' {len(said_again)} times: {said_again[:3]}"


async def test_a_consumer_closed_after_a_lost_fetch_reply_gives_those_jobs_back_uncounted(
    prefix: str, proxy: TcpProxy
) -> None:
    direct = RedisBroker(f"{REDIS_URL}?prefix={prefix}")
    slow = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&socket_timeout=0.4")
    consumer = await slow.consumer(["q"], prefetch=10, lease_seconds=30)
    assert await consumer.fetch(5, 0.0) == []  # the script is loaded on the server now
    await direct.enqueue(jobs(3))
    proxy.delay = 0.5
    with pytest.raises(BrokerConnectionError):
        await consumer.fetch(5, 0.0)
    with anyio.fail_after(5):
        while await in_flight(prefix) < 3:  # noqa: ASYNC110 - polls the server
            await anyio.sleep(0.05)
    proxy.delay = 0.0
    await consumer.close()
    await slow.close()
    assert await in_flight(prefix) == 0, "given back at once, not when the leases end"
    other = await direct.consumer(["q"], prefetch=10, lease_seconds=30)
    got = await other.fetch(10, 0.0)
    assert [d.delivery_count for d in got] == [1, 1, 1]
    await other.close()
    await direct.close()

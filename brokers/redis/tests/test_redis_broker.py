"""Redis-specific promises of the broker, beyond the shared contract suite."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from asyncjobs_redis import RedisBroker
from redis.asyncio import Redis

from asyncjobs import App
from asyncjobs.broker import DeadLetterInfo, OutgoingJob, from_url
from asyncjobs.errors import BrokerConnectionError, BrokerURLError
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
    prefix = f"rb{uuid.uuid4().hex[:10]}"
    connected = RedisBroker(f"{REDIS_URL}?prefix={prefix}&client_name={prefix}")
    await connected.connect()
    try:
        yield connected
    finally:
        await connected.close()
        await delete_prefix(prefix)


def job(queue: str = "q", body: bytes | None = None, job_id: str | None = None) -> OutgoingJob:
    job_id = job_id or uuid.uuid4().hex
    return OutgoingJob(job_id, queue, body if body is not None else f'{{"v":1,"id":"{job_id}"}}'.encode())


def test_url_scheme_finds_the_broker_with_its_prefix_and_db() -> None:
    broker = from_url("redis://127.0.0.1:6379/3?prefix=shop")
    assert isinstance(broker, RedisBroker)
    assert broker.prefix == "shop"
    assert broker.keys("mail").job[0] == "{shop:mail}:ready"
    assert RedisBroker("redis://127.0.0.1:6379/0").prefix == "asyncjobs"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/0?prefix=", "prefix"),
        ("redis://127.0.0.1:6379/0?prefix=a{b", "braces"),
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
        ("redis://127.0.0.1:6379/0?fetch_bytes=0", "fetch_bytes"),
        ("redis://127.0.0.1:6379/0?fetch_bytes=lots", "fetch_bytes"),
        ("memcached://127.0.0.1", "not a Redis URL"),
    ],
)
def test_bad_url_is_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(BrokerURLError, match=message):
        RedisBroker(url)


async def test_unreachable_server_raises_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with anyio.fail_after(10), pytest.raises(BrokerConnectionError):
        await RedisBroker(f"redis://127.0.0.1:{port}/0").connect()


async def test_same_job_id_enqueued_twice_is_two_jobs(broker: RedisBroker) -> None:
    twice = job(job_id="same")
    assert await broker.enqueue([twice, twice]) == [True, True]
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    got = await consumer.fetch(10, 1.0)
    assert [d.job_id for d in got] == ["same", "same"]
    assert len({d.token for d in got}) == 2
    assert await consumer.ack(got) == [True, True]
    assert (await broker.stats("q")).in_flight == 0


async def test_batches_larger_than_a_script_can_unpack_at_once(broker: RedisBroker) -> None:
    count = 9000  # above Lua's 8000-value limit of unpack
    assert await broker.enqueue([job() for _ in range(count)]) == [True] * count
    consumer = await broker.consumer(["q"], prefetch=count, lease_seconds=30)
    got = await consumer.fetch(count, 1.0)
    assert len(got) == count
    assert await consumer.extend(got) == [True] * count
    assert await consumer.ack(got) == [True] * count
    assert (await broker.stats("q")).in_flight == 0
    raw = Redis.from_url(REDIS_URL)
    dead, bodies, infos, _ = broker.keys("q").dead
    async with raw.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.zadd(dead, {f"d{i}": i})
            pipe.hset(bodies, f"d{i}", b"x")
            pipe.hset(infos, f"d{i}", json.dumps({"reason": "test"}))
        await pipe.execute()
    await raw.aclose()
    letters = await broker.list_dead("q", limit=10_000)
    assert len(letters) == count
    assert letters[0].id == f"d{count - 1}", "newest first"


async def test_a_delivery_acked_twice_in_one_call_counts_once(broker: RedisBroker) -> None:
    await broker.enqueue([job()])
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    [delivery] = await consumer.fetch(1, 1.0)
    assert await consumer.ack([delivery, delivery]) == [True, False]


async def test_earlier_queues_are_served_first(broker: RedisBroker) -> None:
    await broker.enqueue([job("low"), job("low"), job("high")])
    consumer = await broker.consumer(["high", "low"], prefetch=10, lease_seconds=30)
    got = await consumer.fetch(2, 1.0)
    assert [d.queue for d in got] == ["high", "low"]
    assert await consumer.ack(got) == [True, True], "one ack call settles jobs of several queues"


async def test_unique_key_is_free_again_after_its_ttl(broker: RedisBroker) -> None:
    def keyed() -> OutgoingJob:
        sent = job()
        return OutgoingJob(sent.id, "q", sent.body, unique_key="k", unique_ttl=0.3)

    assert await broker.enqueue([keyed(), keyed()]) == [True, False]
    await anyio.sleep(0.4)
    assert await broker.enqueue([keyed()]) == [True]


async def test_release_does_not_count_as_a_delivery(broker: RedisBroker) -> None:
    await broker.enqueue([job()])
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    [first] = await consumer.fetch(1, 1.0)
    await consumer.release([first])
    [again] = await consumer.fetch(1, 1.0)
    assert (first.delivery_count, again.delivery_count) == (1, 1)


async def test_unreadable_body_is_delivered_byte_for_byte_without_an_id(broker: RedisBroker) -> None:
    raw = bytes(range(256))
    await broker.enqueue([job(body=raw)])
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    [delivery] = await consumer.fetch(1, 1.0)
    assert await consumer.dead_letter(delivery, DeadLetterInfo("malformed", "EnvelopeError", "not JSON"))
    [dead] = await broker.list_dead("q")
    assert dead.body == raw
    assert await broker.replay_dead("q", dead.id, raw)
    [replayed] = await consumer.fetch(1, 1.0)
    assert (replayed.body, replayed.job_id) == (raw, dead.id), "it keeps the id it had"


async def test_stats_report_the_age_of_the_oldest_ready_job(broker: RedisBroker) -> None:
    await broker.enqueue([job()])
    await anyio.sleep(0.3)
    age = (await broker.stats("q")).oldest_ready_age
    assert age is not None
    assert 0.25 <= age < 5
    assert (await broker.stats("empty")).oldest_ready_age is None


async def test_idle_fetch_waits_on_the_server_not_by_polling(broker: RedisBroker) -> None:
    consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
    raw = Redis.from_url(REDIS_URL)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.fetch, 1, 1.0)
            await anyio.sleep(0.4)
            clients = await raw.client_list()
            tg.cancel_scope.cancel()
    finally:
        await raw.aclose()
    mine = [c for c in clients if c.get("name") == broker.prefix]
    assert any(c.get("cmd") == "blpop" for c in mine), mine


def test_one_broker_serves_one_event_loop_after_another() -> None:
    require_server("redis")
    prefix = f"rb{uuid.uuid4().hex[:10]}"
    broker = RedisBroker(f"{REDIS_URL}?prefix={prefix}")

    async def one_round() -> int:
        await broker.enqueue([job()])
        consumer = await broker.consumer(["q"], prefetch=1, lease_seconds=30)
        got = await consumer.fetch(1, 1.0)
        return sum(await consumer.ack(got))

    try:
        assert anyio.run(one_round) == 1
        assert anyio.run(one_round) == 1
    finally:
        anyio.run(delete_prefix, prefix)


async def test_job_longer_than_its_lease_runs_once_while_heartbeats_hold(broker: RedisBroker) -> None:
    app = App(broker)
    runs: list[int] = []

    @app.task(name="long", timeout=10)
    async def long() -> None:
        runs.append(1)
        await anyio.sleep(2.0)  # more than three leases of 0.6 s

    await long.enqueue()
    rival = await broker.consumer(["default"], prefetch=1, lease_seconds=30)
    async with running(app, lease_seconds=0.6) as worker:
        await eventually(lambda: bool(runs))
        assert await rival.fetch(1, 1.8) == [], "a heartbeating lease is never taken over"
        await eventually(lambda: worker.stats.done == 1)
    assert runs == [1]
    assert worker.stats.lease_lost == 0

"""Redis scenarios: raw redis-py loops, arq, saq, taskiq-redis and asyncjobs, on 127.0.0.1:6379/0.

Every scenario uses keys that contain its unique prefix, and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from benchmarks.asyncjobs_system import AsyncJobsSystem
from benchmarks.core import REDIS_URL, Recorder, System, Workload, in_background, port_open
from benchmarks.peers import TaskiqReceiver

JOB_TIMEOUT = 60.0


async def redis_missing(*modules: str) -> str | None:
    """Why a Redis scenario cannot run here, or ``None``."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -r benchmarks/requirements.txt)"
    if not await anyio.to_thread.run_sync(port_open, 6379):
        return "no Redis server on 127.0.0.1:6379"
    return None


async def delete_keys(prefix: str) -> None:
    """Delete every key of database 0 whose name contains ``prefix``."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


def raw_body(index: int) -> bytes:
    """A minimal job message, JSON like an envelope (id, task, args)."""
    return json.dumps({"id": uuid.uuid4().hex, "task": "bench.noop", "args": [index]}).encode()


class _RawRedis(System):
    role = "raw"

    async def check(self) -> str | None:
        return await redis_missing("redis")

    async def setup(self) -> None:
        from redis.asyncio import Redis

        self.ready, self.inflight = f"{self.prefix}:ready", f"{self.prefix}:inflight"
        self.redis = Redis.from_url(REDIS_URL, max_connections=self.workload.concurrency + 8)

    async def enqueue_one(self, index: int) -> None:
        await self.redis.lpush(self.ready, raw_body(index))

    async def _run(self, body: bytes) -> None:
        index = json.loads(body)["args"][0]
        async with asyncio.timeout(JOB_TIMEOUT):
            await self._noop(index)

    async def _noop(self, index: int) -> None:
        self.recorder.mark(index)

    async def cleanup(self) -> None:
        redis = getattr(self, "redis", None)
        if redis is not None:
            await redis.aclose()
        await delete_keys(self.prefix)


class RawOneRoundTrip(_RawRedis):
    """A minimal reliable queue: ``BLMOVE`` ready -> in-flight, run, ``LREM`` in-flight; one round trip a step."""

    key = "redis-raw-1rt"
    label = "raw redis-py: BLMOVE + LREM per job"

    async def _consume(self) -> None:
        redis, ready, inflight = self.redis, self.ready, self.inflight
        while True:
            body = await redis.blmove(ready, inflight, 1, "RIGHT", "LEFT")
            if not isinstance(body, bytes):
                continue
            await self._run(body)
            await redis.lrem(inflight, 1, body)  # type: ignore[arg-type]  # bytes are fine on the wire

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            for _ in range(self.workload.concurrency):
                tg.start_soon(self._consume)
            yield
            tg.cancel_scope.cancel()


class RawBatched(_RawRedis):
    """The ceiling: pipelined ``LPUSH`` enqueue; one task pops up to 100 jobs per ``RPOP``, N tasks run them."""

    key = "redis-raw-batched"
    label = "raw redis-py: pipelined push, batched pop (ceiling)"
    role = "ceiling"
    has_bulk = True
    note = "the ceiling pops without an in-flight copy or an ack: it is not a reliable queue"

    async def enqueue_bulk(self, indices: range) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for index in indices:
                pipe.lpush(self.ready, raw_body(index))
            await pipe.execute()

    async def _fetch(self, buffer: asyncio.Queue[bytes]) -> None:
        redis, ready = self.redis, self.ready
        while True:
            bodies: list[bytes] = await redis.rpop(ready, 100) or []  # type: ignore[assignment]  # a list with a count
            if not bodies:
                popped = await redis.brpop([ready], 1)
                bodies = [popped[1]] if popped else []  # type: ignore[list-item]  # bytes without decode_responses
            for body in bodies:
                await buffer.put(body)

    async def _consume(self, buffer: asyncio.Queue[bytes]) -> None:
        while True:
            await self._run(await buffer.get())

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        buffer: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fetch, buffer)
            for _ in range(self.workload.concurrency):
                tg.start_soon(self._consume, buffer)
            yield
            tg.cancel_scope.cancel()


class ArqPeer(System):
    """arq: a sorted-set queue polled by the worker."""

    key = "arq"
    label = "arq"
    note = "arq polls its queue; poll_delay=0.01 s instead of the default 0.5 s (which caps a drain near 200 jobs/s)"

    async def check(self) -> str | None:
        return await redis_missing("arq")

    async def setup(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.settings = RedisSettings(host="127.0.0.1", port=6379, database=0)
        self.pool = await create_pool(self.settings, default_queue_name=self.prefix)

    async def enqueue_one(self, index: int) -> None:
        await self.pool.enqueue_job("noop", index, _job_id=f"{self.prefix}-{index}")

    async def _noop(self, ctx: dict[str, Any], index: int) -> None:
        self.recorder.mark(index)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        from arq.worker import Worker, func

        worker = Worker(
            functions=[func(self._noop, name="noop")],
            redis_pool=self.pool,
            queue_name=self.prefix,
            max_jobs=self.workload.concurrency,
            handle_signals=False,
            keep_result=0,
            poll_delay=0.01,
        )
        async with in_background(worker.main):  # its close() re-raises its jobs' cancellation
            yield

    async def cleanup(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            await pool.aclose()
        await delete_keys(self.prefix)


class SaqPeer(System):
    """saq: a Redis list moved with BLMOVE, job state in hashes, a sweeper."""

    key = "saq"
    label = "saq"

    async def check(self) -> str | None:
        return await redis_missing("saq")

    async def setup(self) -> None:
        from saq import Queue

        self.queue = Queue.from_url(REDIS_URL, name=self.prefix)
        await self.queue.connect()

    async def enqueue_one(self, index: int) -> None:
        await self.queue.enqueue("noop", index=index)

    async def _noop(self, ctx: Any, *, index: int) -> None:
        self.recorder.mark(index)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        from saq import Worker

        worker = Worker(self.queue, functions=[("noop", self._noop)], concurrency=self.workload.concurrency)
        async with in_background(worker.start, worker.stop):
            yield

    async def cleanup(self) -> None:
        queue = getattr(self, "queue", None)
        if queue is not None:
            await queue.disconnect()
        await delete_keys(self.prefix)


class TaskiqRedisList(TaskiqReceiver):
    """taskiq-redis ``ListQueueBroker``: LPUSH / BRPOP, no acknowledgement."""

    key = "taskiq-redis-list"
    label = "taskiq-redis ListQueueBroker"
    note = "ListQueueBroker pops without an in-flight copy: a job of a killed worker is lost"

    async def check(self) -> str | None:
        return await redis_missing("taskiq_redis")

    def make_broker(self) -> Any:
        from taskiq_redis import ListQueueBroker

        return ListQueueBroker(REDIS_URL, queue_name=self.prefix)

    async def cleanup(self) -> None:
        await super().cleanup()
        await delete_keys(self.prefix)


class TaskiqRedisStream(TaskiqRedisList):
    """taskiq-redis ``RedisStreamBroker``: a stream with a consumer group and acks."""

    key = "taskiq-redis-stream"
    label = "taskiq-redis RedisStreamBroker"
    note = ""

    def make_broker(self) -> Any:
        from taskiq_redis import RedisStreamBroker

        return RedisStreamBroker(REDIS_URL, queue_name=self.prefix, consumer_group_name=self.prefix)


class AsyncJobsRedis(AsyncJobsSystem):
    """asyncjobs on Redis: leases, heartbeats and acks on; ``enqueue_many`` for the bulk enqueue."""

    key = "asyncjobs-redis"
    label = "asyncjobs redis://"

    def __init__(self, workload: Workload, recorder: Recorder, prefix: str) -> None:
        super().__init__(workload, recorder, prefix, REDIS_URL)

    async def check(self) -> str | None:
        return await redis_missing("asyncjobs_redis") or await super().check()

    async def cleanup(self) -> None:
        await super().cleanup()
        await delete_keys(self.prefix)


SYSTEMS: list[type[System]] = [
    RawOneRoundTrip,
    RawBatched,
    ArqPeer,
    SaqPeer,
    TaskiqRedisList,
    TaskiqRedisStream,
    AsyncJobsRedis,
]

"""The Redis broker under real faults: killed workers, racing reapers, stolen leases, a restarted server.

Workers run as real processes (``asyncjobs worker``) on the shared test server, except the
restart and server-setting tests, which start and kill a Redis server of their own on a spare
loopback port (``tests.servers.redis``, no persistence: a restart loses the server's memory).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import astuple
from pathlib import Path

import anyio
import pytest
from asyncjobs_redis import RedisBroker
from redis.asyncio import Redis

from asyncjobs import App
from asyncjobs.broker import Delivery, OutgoingJob
from asyncjobs.errors import BrokerConnectionError
from tests.harness import require_server
from tests.harness.redis import REDIS_URL, delete_prefix
from tests.runtime.helpers import eventually, running
from tests.servers.redis import redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.fault]

HERE = Path(__file__).parent
CLI = str(Path(sys.executable).with_name("asyncjobs"))
Record = list[str]  # "start ID COUNT PID" or "end ID COUNT PID OUTCOME", split


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the shared server (records included), deleted afterwards."""
    require_server("redis")
    name = f"fault{uuid.uuid4().hex[:10]}"
    yield name
    await delete_prefix(name)


def fault_app(url: str) -> App:
    sys.path.insert(0, str(HERE))
    try:
        from redis_fault_app import make_app  # type: ignore[import-not-found,unused-ignore]
    finally:
        sys.path.remove(str(HERE))
    app: App = make_app(url)
    return app


def record_key(prefix: str) -> str:
    return f"{{{prefix}:records}}"


async def records(prefix: str) -> list[Record]:
    """The attempt records the workers wrote."""
    client = Redis.from_url(REDIS_URL)
    try:
        return [
            (line.decode() if isinstance(line, bytes) else line).split()
            for line in await client.lrange(record_key(prefix), 0, -1)
        ]
    finally:
        await client.aclose()


async def records_when(prefix: str, done: Callable[[list[Record]], bool], within: float) -> list[Record]:
    """The records, once ``done(records)`` holds; fails after ``within`` seconds."""
    with anyio.fail_after(within):
        while not done(found := await records(prefix)):  # noqa: ASYNC110 - polls another process's writes
            await anyio.sleep(0.05)
    return found


def finished(found: list[Record]) -> set[str]:
    return {r[1] for r in found if r[0] == "end" and r[4] == "done"}


@contextlib.contextmanager
def worker_process(url: str, prefix: str, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """``asyncjobs worker`` for the fault app, stopped (or killed) on exit."""
    env = {**os.environ, "AJ_FAULT_RECORD": record_key(prefix), "AJ_FAULT_REDIS": REDIS_URL}
    proc = subprocess.Popen(
        [CLI, "--log-level", "ERROR", "worker", "redis_fault_app:app", "--broker", url, "--drain", "0", *options],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def test_killed_worker_jobs_come_back_once_with_raised_count_and_finish(prefix: str) -> None:
    url = f"{REDIS_URL}?prefix={prefix}"
    producer = fault_app(url)
    total = 30
    async with producer:
        ids = {(await producer.enqueue("fault.nap", 0.4)).id for _ in range(total)}
        with worker_process(url, prefix, "-c", "5", "--lease", "1.5") as first:
            await records_when(prefix, lambda rs: len(finished(rs)) >= 5, within=15)
            first.kill()  # SIGKILL mid-job: no release, no ack
            first.wait(5)
        found = await records(prefix)
        killed = str(first.pid)
        in_flight = {r[1] for r in found if r[0] == "start" and r[3] == killed} - {
            r[1] for r in found if r[0] == "end" and r[3] == killed
        }
        assert in_flight, "the worker must be killed mid-job"
        with worker_process(url, prefix, "-c", "5", "--lease", "1.5") as second:
            await records_when(prefix, lambda rs: finished(rs) >= ids, within=20)
            with anyio.fail_after(10):  # a job finished but not yet acked when its worker died runs again
                while sum(astuple(await producer.broker.stats("default"))[:4]) > 0:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            found = await records(prefix)
        stats = await producer.broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, 0), "none lost or left"
    assert finished(found) == ids
    rerun = Counter(r[1] for r in found if r[0] == "start" and r[3] == str(second.pid))
    assert set(rerun.values()) == {1}, "no job ran twice on the surviving worker"
    for job_id in in_flight:
        counts = [r[2] for r in found if r[0] == "start" and r[1] == job_id and r[3] == str(second.pid)]
        assert counts == ["2"], f"job {job_id}, in flight when its worker died, comes back once with count 2"


async def test_racing_consumers_redeliver_each_expired_lease_exactly_once(prefix: str) -> None:
    url = f"{REDIS_URL}?prefix={prefix}"
    broker = RedisBroker(url)
    total = 300
    await broker.enqueue([OutgoingJob(uuid.uuid4().hex, "race", b"{}") for _ in range(total)])
    ghost = await broker.consumer(["race"], prefetch=total, lease_seconds=1.0)
    taken: list[Delivery] = []
    while len(taken) < total:
        taken += await ghost.fetch(total, 1.0)
    expires = time.time() + 1.0
    outputs: list[list[str]] = []

    async def racer() -> None:
        command = [sys.executable, str(HERE / "redis_racer.py"), url, "race", str(expires), "1.0"]
        result = await anyio.run_process(command)
        outputs.append(result.stdout.decode().split("\n"))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(racer)
    got = [line.split() for out in outputs for line in out[1:] if line]
    assert all(out[0] == "ready" for out in outputs)
    assert all(len(line) == 3 for line in got)
    assert sum(1 for out in outputs if len(out) > 2) >= 2, "at least two processes took part in the race"
    assert Counter(job_id for job_id, _, _ in got) == Counter({d.job_id: 1 for d in taken}), "each exactly once"
    assert {count for _, count, _ in got} == {"2"}
    assert {ok for _, _, ok in got} == {"ok"}
    assert await ghost.ack(taken) == [False] * total, "the expired holder can settle none of them"
    stats = await broker.stats("race")
    assert (stats.ready, stats.in_flight) == (0, 0)
    await broker.close()


async def test_stolen_lease_cancels_the_handler_and_is_not_acked(prefix: str) -> None:
    broker = RedisBroker(f"{REDIS_URL}?prefix={prefix}")
    app = App(broker)
    started, cancelled = anyio.Event(), anyio.Event()

    @app.task(name="victim", timeout=None)
    async def victim() -> None:
        started.set()
        try:
            await anyio.sleep(30)
        except BaseException:
            cancelled.set()
            raise

    await victim.enqueue()
    leased = broker.keys("default").job[2]
    raw = Redis.from_url(REDIS_URL)
    thief = await broker.consumer(["default"], prefetch=1, lease_seconds=30)
    try:
        async with running(app, lease_seconds=0.9) as worker:
            with anyio.fail_after(5):
                await started.wait()
            stolen: list[Delivery] = []
            with anyio.fail_after(5):
                while not stolen:  # a heartbeat landing in between renews it: end it again
                    [handle] = await raw.zrange(leased, 0, -1)
                    assert isinstance(handle, bytes)
                    await raw.zadd(leased, {handle: 0})  # the lease runs out under the worker's feet
                    stolen = await thief.fetch(1, 0.0)
            assert stolen[0].delivery_count == 2
            with anyio.fail_after(5):
                await cancelled.wait()
            await eventually(lambda: worker.stats.lease_lost == 1)
        assert worker.stats.done == 0
        assert await thief.ack(stolen) == [True], "the job belongs to the new holder"
    finally:
        await thief.close()
        await raw.aclose()
        await broker.close()


async def test_worker_survives_a_redis_restart_and_resumes(prefix: str, tmp_path: Path) -> None:
    with redis_server(workdir=tmp_path) as server:
        url = f"{server.url}?prefix={prefix}"
        producer = fault_app(url)
        async with producer:
            before = {(await producer.enqueue("fault.nap", 0.01)).id for _ in range(3)}
            with worker_process(url, prefix, "-c", "3", "--lease", "1") as worker:
                await records_when(prefix, lambda rs: finished(rs) >= before, within=10)
                long = {(await producer.enqueue("fault.nap", 10)).id for _ in range(3)}
                await records_when(prefix, lambda rs: {r[1] for r in rs if r[0] == "start"} >= long, within=10)
                # Down for longer than a lease: every slot's lease is given up while the server is away.
                await anyio.to_thread.run_sync(server.restart, 1.5)
                after = {(await producer.enqueue("fault.nap", 0.01)).id for _ in range(3)}
                found = await records_when(prefix, lambda rs: finished(rs) >= after, within=12)
                assert worker.poll() is None, "the worker process survived the restart"
        assert not finished(found) & long, "the jobs lost with the server's memory were not finished"


async def test_a_server_that_may_evict_jobs_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with redis_server("--maxmemory-policy", "allkeys-lru", workdir=tmp_path) as server:
        broker = RedisBroker(server.url)
        await broker.connect()
        await broker.close()
    assert "maxmemory-policy is allkeys-lru" in caplog.text


async def test_operations_on_a_downed_server_raise_connection_errors_then_recover(tmp_path: Path) -> None:
    with redis_server(workdir=tmp_path) as server:
        broker = RedisBroker(f"{server.url}?socket_timeout=2")
        await broker.connect()
        consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
        await broker.enqueue([OutgoingJob("a", "q", b"{}")])
        [held] = await consumer.fetch(1, 1.0)
        down = anyio.Event()

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, functools.partial(server.restart, 0.5))
            with anyio.fail_after(10):
                while not down.is_set():
                    try:
                        await broker.stats("q")
                    except BrokerConnectionError:
                        down.set()
                    await anyio.sleep(0.01)
        assert down.is_set()
        assert await consumer.extend([held]) == [False], "the restarted server (no persistence) lost the lease"
        assert await broker.enqueue([OutgoingJob("b", "q", b"{}")]) == [True]
        [again] = await consumer.fetch(1, 1.0)
        assert again.job_id == "b"
        await consumer.close()
        await broker.close()

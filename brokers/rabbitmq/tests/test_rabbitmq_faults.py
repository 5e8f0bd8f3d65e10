"""Fault tests on the real server with real worker processes: kill -9, a forced connection close,
and a job that outlives the server's consumer timeout.

The consumer-timeout test needs ``consumer_timeout`` (and the channel tick that enforces it) far
below their defaults: it runs on a private RabbitMQ node started with them in its own config
(``tests.servers.rabbitmq``), never by changing the shared server's settings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import pytest
from asyncjobs_rabbitmq import RabbitBroker

from asyncjobs import App
from tests.harness import require_server
from tests.servers.rabbitmq import RabbitNode, rabbitmq_node

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq, pytest.mark.fault]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path.insert(0, str(HERE))
from rabbit_worker import QUEUE, make_app  # noqa: E402

BASE = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(autouse=True)
def _server(request: pytest.FixtureRequest) -> None:
    if "timeout_node" not in request.fixturenames:  # that one brings a server of its own
        require_server("rabbitmq")


CONSUMER_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def timeout_node() -> Iterator[RabbitNode]:
    """A private node whose ``consumer_timeout`` is 2 s, checked every 500 ms (the channel tick is
    60 s by default, and ``rabbitmq.conf`` has no key for it: it goes into ``advanced.config``)."""
    with rabbitmq_node(f"consumer_timeout = {CONSUMER_TIMEOUT_MS}", rabbit_env={"channel_tick_interval": 500}) as node:
        yield node


def url(prefix: str, queue_type: str, name: str, base: str = BASE) -> str:
    return f"{base}?queue_type={queue_type}&queue_prefix={prefix}.&connection_name={name}"


@asynccontextmanager
async def producer(prefix: str, queue_type: str, base: str = BASE) -> AsyncIterator[App]:
    """An app to enqueue with; deletes every queue of the test at the end."""
    app = make_app(url(prefix, queue_type, f"{prefix}-producer", base))
    broker = app.broker
    assert isinstance(broker, RabbitBroker)
    await broker.connect()
    try:
        yield app
    finally:
        await broker.delete_queues(QUEUE)
        await broker.close()


def spawn(
    prefix: str, queue_type: str, log: Path, concurrency: int = 4, lease: float = 3.0, base: str = BASE
) -> subprocess.Popen[str]:
    """Start a worker process (see ``rabbit_worker.py``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(HERE / "rabbit_worker.py"), url(prefix, queue_type, f"{prefix}-worker", base), str(log)]
    return subprocess.Popen([*args, str(concurrency), str(lease)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM a worker still running (kill it after 15 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def worker(
    prefix: str, queue_type: str, log: Path, concurrency: int = 4, lease: float = 3.0, base: str = BASE
) -> Iterator[subprocess.Popen[str]]:
    """A worker process, started and ready; stopped at the end if still running."""
    proc = spawn(prefix, queue_type, log, concurrency, lease, base)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "worker did not start"
        yield proc
    finally:
        stop(proc)


def lines(log: Path, kind: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line.startswith(kind + " ")]


def done_ids(log: Path) -> set[str]:
    return {parts[1] for parts in lines(log, "end") if parts[2] == "done"}


async def wait_for(condition: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await anyio.sleep(0.05)


async def enqueue(app: App, count: int, seconds: float) -> set[str]:
    sent = [await app.enqueue("fault.sleepy", seconds) for _ in range(count)]
    return {ref.id for ref in sent}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_killed_worker_jobs_come_back_with_raised_count_and_none_is_lost(tmp_path: Path, queue_type: str) -> None:
    prefix, log = f"f{uuid.uuid4().hex[:10]}", tmp_path / "runs.log"
    async with producer(prefix, queue_type) as app:
        ids = await enqueue(app, 20, 0.4)
        with worker(prefix, queue_type, log) as first:
            await wait_for(lambda: len(lines(log, "start")) >= 6, 20, "jobs to start")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        cut = {p[1] for p in lines(log, "start")} - done_ids(log)
        assert cut, "the kill should interrupt running jobs"
        with worker(prefix, queue_type, log):
            await wait_for(lambda: done_ids(log) >= ids, 30, "every job to finish")
        again = [p for p in lines(log, "start") if p[1] in cut and int(p[3]) >= 2]
        assert {p[1] for p in again} >= cut, "interrupted jobs come back with delivery count >= 2"
        assert all(int(p[2]) >= 2 for p in again), "the crash counts as an attempt"
        assert done_ids(log) == ids
        assert (await app.broker.stats(QUEUE)).ready == 0


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_poison_pill_that_kills_its_worker_ends_in_dead_letters(tmp_path: Path, queue_type: str) -> None:
    prefix, log = f"f{uuid.uuid4().hex[:10]}", tmp_path / "runs.log"
    async with producer(prefix, queue_type) as app:
        pill = (await app.enqueue("fault.die")).id
        survivor = (await app.enqueue("fault.sleepy", 0.0)).id
        for _ in range(5):  # max_attempts=3: three deaths, then the next worker dead-letters it
            proc = spawn(prefix, queue_type, log, concurrency=1)
            try:
                with anyio.fail_after(20):
                    while proc.poll() is None and await app.broker.get_dead(QUEUE, pill) is None:  # noqa: ASYNC110
                        await anyio.sleep(0.1)
            finally:
                stop(proc)
            if await app.broker.get_dead(QUEUE, pill) is not None:
                break
        dead = await app.broker.get_dead(QUEUE, pill)
        assert dead is not None, (
            f"the poison pill must end in the dead letters, not loop forever: {lines(log, 'start')}"
        )
        assert dead.info.reason == "max_attempts"
        assert [int(p[3]) for p in lines(log, "start") if p[1] == pill] == [1, 2, 3], "each death counted once"
        assert survivor in done_ids(log)


def _connection_pid(name: str) -> str | None:
    out = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        if f'<<"{name}">>' in line or f'"{name}"' in line:
            match = re.match(r"\s*(<[^>]+>)", line)
            if match:
                return match.group(1)
    return None


async def test_forced_connection_close_reconnects_and_loses_nothing(tmp_path: Path) -> None:
    prefix, log = f"f{uuid.uuid4().hex[:10]}", tmp_path / "runs.log"
    async with producer(prefix, "quorum") as app:
        ids = await enqueue(app, 30, 0.3)
        with worker(prefix, "quorum", log, concurrency=5) as proc:
            await wait_for(lambda: len(lines(log, "start")) >= 5, 20, "jobs to start")
            pid = await anyio.to_thread.run_sync(_connection_pid, f"{prefix}-worker")
            assert pid is not None, "worker connection not listed"
            closed = await anyio.run_process(["rabbitmqctl", "close_connection", pid, "fault test"], check=False)
            assert closed.returncode == 0, closed.stderr
            await wait_for(lambda: done_ids(log) >= ids, 40, "every job to finish after the reconnect")
            assert proc.poll() is None, "the worker survives the connection loss"
        assert done_ids(log) == ids
        assert (await app.broker.stats(QUEUE)).ready == 0


async def test_job_longer_than_consumer_timeout_runs_once_on_a_healthy_worker(
    tmp_path: Path, timeout_node: RabbitNode
) -> None:
    prefix, log = f"f{uuid.uuid4().hex[:10]}", tmp_path / "runs.log"
    assert timeout_node.eval("application:get_env(rabbit, consumer_timeout).") == f"{{ok,{CONSUMER_TIMEOUT_MS}}}"
    base = timeout_node.url
    async with producer(prefix, "quorum", base) as app:
        with worker(prefix, "quorum", log, concurrency=2, lease=6.0, base=base):
            long_id = (await app.enqueue("fault.sleepy", 9.0)).id  # 4.5 x consumer_timeout
            short_ids = {(await app.enqueue("fault.sleepy", 0.1)).id for _ in range(3)}
            await wait_for(lambda: long_id in done_ids(log), 40, "the long job to finish")
            await wait_for(lambda: done_ids(log) >= short_ids, 10, "the short jobs")
        starts = [p for p in lines(log, "start") if p[1] == long_id]
        assert len(starts) == 1, f"the long job ran {len(starts)} times"
        assert next(p for p in lines(log, "end") if p[1] == long_id)[2] == "done"
        await anyio.sleep(1.0)
        assert (await app.broker.stats(QUEUE)).ready == 0
    server_log = timeout_node.log_file.read_text()
    assert "delivery acknowledgement on channel" in server_log and "timed out" in server_log, (
        "the server closed the worker's channel for consumer_timeout (else this test proves nothing)"
    )

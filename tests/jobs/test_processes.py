"""Job handles against real ``asyncjobs worker`` processes: a cancel reaches a running job, and a
kill -9 never leaves a result for a job that did not finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import pytest

from asyncjobs import App
from asyncjobs.errors import ResultTimeoutError
from asyncjobs.results.redis import RedisResultStore
from tests.harness import harnesses, require_server
from tests.harness.redis import delete_prefix

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
BROKERS = {"redis": "redis", "amqp+redis": "rabbitmq"}


@asynccontextmanager
async def setup(kind: str, tmp_path: Path) -> AsyncIterator[tuple[App, dict[str, str]]]:
    """An app on a fresh namespace of ``kind`` and the environment of a worker process for it."""
    name = BROKERS[kind]
    require_server(name)
    require_server("redis")
    namespace = f"t{uuid.uuid4().hex[:12]}"
    async with harnesses()[name](namespace) as broker:
        store = RedisResultStore.from_url(REDIS_URL, prefix=namespace)
        app = App(broker, results=store)
        env = {
            "ASYNCJOBS_BROKER_URL": broker.url,
            "JOBS_RESULTS_URL": REDIS_URL,
            "JOBS_RESULTS_PREFIX": namespace,
            "JOBS_LOG": str(tmp_path / "runs.log"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "brokers/redis"), str(ROOT / "brokers/rabbitmq")]),
        }
        try:
            yield app, env
        finally:
            await store.close()
            await delete_prefix(namespace)


@contextmanager
def worker(env: dict[str, str], *extra: str) -> Iterator[subprocess.Popen[str]]:
    """An ``asyncjobs worker`` process; killed (by its PID) if still running at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", "worker", "tests.jobs.jobs_app:app", "--lease", "2", *extra],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def runs(env: dict[str, str]) -> list[str]:
    path = Path(env["JOBS_LOG"])
    return path.read_text().splitlines() if path.exists() else []


async def until(condition: object, within: float = 20.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await anyio.sleep(0.05)


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_a_cancel_stops_a_job_running_on_a_worker_process(kind: str, tmp_path: Path) -> None:
    async with setup(kind, tmp_path) as (app, env):
        ref = await app.enqueue("jobs.step", 1)
        with worker({**env, "JOBS_HANG": "1"}, "--heartbeat", "0.5") as proc:
            await until(lambda: "start 1" in runs(env))
            with anyio.fail_after(10):  # "running" is written with the worker's next heartbeat
                while (await ref.status()).state != "running":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            asked = anyio.current_time()
            await ref.cancel()
            with anyio.fail_after(10):
                while (await ref.status()).state != "cancelled":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            took = anyio.current_time() - asked
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        assert runs(env) == ["start 1", "cancelled 1"]
        assert took < 3.0  # a heartbeat is 0.5 s
        status = await ref.status()
        assert status.reason == "cancelled"
        assert not status.has_result
        stats = await app.broker.stats("default")
        assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, 0)


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_a_kill_between_the_result_and_the_ack_runs_the_job_again(kind: str, tmp_path: Path) -> None:
    async with setup(kind, tmp_path) as (app, env):
        ref = await app.enqueue("jobs.step", 2)
        with worker({**env, "JOBS_KILL_AFTER_RESULT": "1"}) as first:
            assert first.wait(timeout=30) == -signal.SIGKILL
        assert runs(env) == ["start 2", "end 2"]  # the result was written after a whole run
        assert (await ref.status()).state == "done"
        with worker(env) as second:
            await until(lambda: runs(env).count("end 2") == 2)  # not acked: the broker gave it out again
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0
        assert runs(env) == ["start 2", "end 2", "start 2", "end 2"]
        assert await ref.result(timeout=5) == 20
        stats = await app.broker.stats("default")
        assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, 0)


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_a_kill_during_the_run_leaves_no_result_until_a_run_finishes(kind: str, tmp_path: Path) -> None:
    async with setup(kind, tmp_path) as (app, env):
        ref = await app.enqueue("jobs.step", 3)
        with worker({**env, "JOBS_HANG": "1"}) as first:
            await until(lambda: "start 3" in runs(env))
            with anyio.fail_after(10):  # "running" is written with the worker's next heartbeat
                while (await ref.status()).state != "running":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=10) == -signal.SIGKILL
        status = await ref.status()
        assert status.state == "running"
        assert not status.has_result
        with pytest.raises(ResultTimeoutError):
            await ref.result(timeout=0.5)
        with worker(env) as second:
            assert await ref.result(timeout=30) == 30
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0
        assert runs(env) == ["start 3", "start 3", "end 3"]
        status = await ref.status()
        assert status.attempt == 2  # the crash redelivery is counted
        stats = await app.broker.stats("default")
        assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, 0)

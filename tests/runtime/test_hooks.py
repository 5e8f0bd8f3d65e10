"""Lifecycle hooks and the job context: startup opens, handlers use, shutdown closes after the last job."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

import asyncjobs
from asyncjobs import App, AsyncJobsError, ConfigError, Retry, StartupError, Worker, WorkerConfig
from asyncjobs.retrying import Backoff
from tests.runtime.helpers import eventually, memory_app, running

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


class Pool:
    """Stands for a database pool: usable only between open and close."""

    def __init__(self) -> None:
        self.open = True
        self.used: list[str] = []

    def use(self, what: str) -> None:
        assert self.open, f"{what} used the pool after it was closed"
        self.used.append(what)


async def test_startup_opens_handlers_use_and_shutdown_closes_after_the_last_job() -> None:
    app = memory_app()
    events: list[str] = []
    workers: list[Worker] = []

    @app.on_startup
    async def open_pool() -> None:
        events.append("startup")
        app.state.pool = Pool()

    @app.on_shutdown
    async def close_pool() -> None:
        events.append(f"shutdown after {workers[0].stats.done} done")
        app.state.pool.open = False

    @app.task(name="use")
    async def use(n: int) -> None:
        await anyio.sleep(0.01)
        asyncjobs.current_job().app.state.pool.use(f"job {n}")

    for n in range(20):
        await use.enqueue(n)
    async with running(app, concurrency=4) as worker:
        workers.append(worker)
        await eventually(lambda: worker.stats.done == 20)
        assert events == ["startup"]
    assert events == ["startup", "shutdown after 20 done"]
    assert sorted(app.state.pool.used) == sorted(f"job {n}" for n in range(20))
    assert not app.state.pool.open


async def test_a_handler_sees_its_own_job_context() -> None:
    app = memory_app()
    seen: list[tuple[object, ...]] = []

    @app.task(name="ctx", queue="mail", timeout=30, backoff=Backoff(base=0.01, cap=0.01))
    async def ctx() -> None:
        job = asyncjobs.current_job()
        assert job.deadline is not None
        effective = anyio.current_effective_deadline()
        children: list[asyncjobs.Job] = []

        async def child() -> None:
            children.append(asyncjobs.current_job())

        async with anyio.create_task_group() as tg:  # tasks the handler starts see the same job
            tg.start_soon(child)
        assert children == [job]
        seen.append((job.id, job.task, job.queue, job.attempt, job.key, job.headers, job.deadline - effective))
        assert 29 < job.time_left() <= 30
        if job.attempt == 1:
            raise Retry("again")

    ref = await ctx.options(key="k-1", headers={"tenant": "acme"}).enqueue()
    async with running(app, queues=("mail",)) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert [s[:6] for s in seen] == [
        (ref.id, "ctx", "mail", 1, "k-1", {"tenant": "acme"}),
        (ref.id, "ctx", "mail", 2, "k-1", {"tenant": "acme"}),
    ]
    assert all(abs(float(str(s[6]))) < 0.5 for s in seen)  # the deadline the handler's scope enforces


async def test_a_job_without_timeout_has_no_deadline_and_current_job_outside_a_job_is_an_error() -> None:
    app = memory_app()
    left: list[float] = []

    @app.task(name="free", timeout=None)
    async def free() -> None:
        assert asyncjobs.current_job().deadline is None
        left.append(asyncjobs.current_job().time_left())

    await free.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1)
    assert left == [math.inf]
    with pytest.raises(AsyncJobsError, match="outside a job"):
        asyncjobs.current_job()
    with pytest.raises(AsyncJobsError, match="outside a job"):
        await free()


async def test_a_failing_startup_hook_stops_the_worker_before_it_takes_a_job() -> None:
    app = memory_app()
    ran: list[str] = []

    @app.on_startup
    async def first() -> None:
        ran.append("first")

    @app.on_startup
    async def broken() -> None:
        raise ConnectionRefusedError("db down")

    @app.on_shutdown
    async def closing() -> None:
        ran.append("shutdown")

    @app.task(name="never")
    async def never() -> None:
        ran.append("job")

    await never.enqueue()
    worker = Worker(app, WorkerConfig(shutdown_signals=False))
    with pytest.raises(StartupError, match=r"startup hook .*broken failed: ConnectionRefusedError: db down"):
        with anyio.fail_after(10):
            await worker.run()
    assert ran == ["first"]
    assert worker.stats.settled == 0
    assert (await app.broker.stats("default")).ready == 1  # the job waits for a worker that starts


async def test_a_failing_shutdown_hook_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    app = memory_app()
    closed: list[str] = []

    @app.on_shutdown
    async def close_a() -> None:
        closed.append("a")

    @app.on_shutdown
    async def close_b() -> None:
        raise RuntimeError("b would not close")

    async with running(app):
        pass
    assert closed == ["a"]  # b ran first (reverse order), failed, and a still ran
    assert "shutdown hook" in caplog.text and "b would not close" in caplog.text


def test_hooks_must_be_async_functions_of_no_arguments() -> None:
    app = App("memory://")

    def sync_hook() -> None:
        pass

    async def needs_argument(ctx: object) -> None:
        pass

    with pytest.raises(ConfigError, match="must be an 'async def'"):
        app.on_startup(sync_hook)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="must take no arguments"):
        app.on_shutdown(needs_argument)  # type: ignore[type-var]


def worker_process(target: str, url: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", "worker", target, "--broker", url, "--drain", "5"],
        cwd=ROOT,
        env={**os.environ, "HOOKS_LOG": str(log)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_cli_worker_with_a_failing_startup_hook_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    proc = worker_process("tests.runtime.hooks_app:failing", "memory://", tmp_path / "log")
    output, _ = proc.communicate(timeout=60)
    lines = output.strip().splitlines()
    assert proc.returncode == 1, output
    assert lines == [
        "Error: startup hook tests.runtime.hooks_app.connect_database failed: ConnectionRefusedError: "
        "database at 127.0.0.1:1 refused the connection (is it running?)"
    ], output


@pytest.mark.redis
async def test_cli_worker_runs_startup_before_and_shutdown_after_its_jobs(tmp_path: Path) -> None:
    from tests.harness import require_server

    require_server("redis")
    pytest.importorskip("asyncjobs_redis")
    from tests.harness.redis import delete_prefix

    prefix = f"h{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    log = tmp_path / "hooks.log"
    proc = worker_process("tests.runtime.hooks_app:app", url, log)
    try:
        from tests.runtime.hooks_app import record

        async with App(url) as producer:
            await producer.publish([producer.build(record.spec, record._call, (n,), {}) for n in range(5)])
        deadline = time.monotonic() + 30
        while not log.exists() or log.read_text().count("job ") < 5:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            await anyio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        assert proc.returncode == 0, output
        lines = log.read_text().splitlines()
        assert lines[0] == "startup" and lines[-1] == "shutdown", lines
        assert sorted(lines[1:-1]) == sorted(f"job {n} attempt 1 queue default" for n in range(5))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await delete_prefix(prefix)


async def test_measuring_a_task_runs_the_hooks_and_gives_each_run_a_job_context() -> None:
    from asyncjobs.sizing import measure

    app = memory_app()
    events: list[str] = []

    @app.on_startup
    async def open_pool() -> None:
        events.append("startup")
        app.state.pool = Pool()

    @app.on_shutdown
    async def close_pool() -> None:
        events.append("shutdown")
        app.state.pool.open = False

    @app.task(name="sized", queue="reports")
    async def sized(n: int) -> None:
        job = asyncjobs.current_job()
        job.app.state.pool.use(f"{job.task} {job.queue} {n}")

    measured = await measure(sized.spec, [((1,), {}), ((2,), {})], runs=2, concurrency=2, limit=5)
    assert measured.errors == {}
    assert len(measured.durations) == 4
    assert events == ["startup", "shutdown"]
    assert sorted(app.state.pool.used) == ["sized reports 1"] * 2 + ["sized reports 2"] * 2

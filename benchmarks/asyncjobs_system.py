"""asyncjobs itself, through its public API only, on any broker URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asyncjobs import App, Task
from benchmarks.core import Recorder, System, Workload, in_background


class AsyncJobsSystem(System):
    """``App(url)``, ``@app.task``, ``task.enqueue`` / ``app.enqueue_many``, a ``Worker`` in a task group.

    The worker runs with its defaults (leases of 30 s, a batched heartbeat every 10 s, batched
    acks, the full middleware chain: tracing, retry classification, a per-job timeout of 60 s).
    """

    role = "asyncjobs"
    has_bulk = True

    def __init__(self, workload: Workload, recorder: Recorder, prefix: str, url: str) -> None:
        super().__init__(workload, recorder, prefix)
        self.url = url
        self.app: App | None = None
        self.task: Task[[int], None] | None = None

    async def check(self) -> str | None:
        try:
            app = App(self.url, default_queue=self.prefix)
            app.broker  # noqa: B018 - resolves the URL scheme to a broker class now
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        return None

    def make_app(self) -> App:
        """The app of this scenario (a hook for variants)."""
        return App(self.url, default_queue=self.prefix)

    def worker_middleware(self) -> list[Any]:
        """Extra worker middleware (a hook for variants)."""
        return []

    async def setup(self) -> None:
        app = self.app = self.make_app()
        recorder = self.recorder

        @app.task(name="bench.noop")
        async def noop(index: int) -> None:
            recorder.mark(index)

        self.task = noop
        await app.broker.connect()

    async def enqueue_one(self, index: int) -> None:
        assert self.task is not None
        await self.task.enqueue(index)

    async def enqueue_bulk(self, indices: range) -> None:
        task = self.task
        assert self.app is not None and task is not None
        await self.app.enqueue_many(task, [task.call(i) for i in indices])

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        from asyncjobs import Worker, WorkerConfig

        config = WorkerConfig(queues=(self.prefix,), concurrency=self.workload.concurrency, shutdown_signals=False)
        assert self.app is not None
        worker = Worker(self.app, config, middleware=self.worker_middleware())
        async with in_background(worker.run, worker.stop, grace=10.0):
            yield

    async def cleanup(self) -> None:
        if self.app is not None:
            await self.app.broker.close()

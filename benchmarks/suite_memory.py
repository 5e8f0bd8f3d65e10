"""In one process, no server: the bare asyncio ceiling, asyncjobs on ``memory://`` and taskiq's InMemoryBroker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from benchmarks.asyncjobs_system import AsyncJobsSystem
from benchmarks.core import Recorder, System, Workload

JOB_TIMEOUT = 60.0


class BareLoop(System):
    """The ceiling: an ``asyncio.Queue`` and N consumer tasks, each job awaited under ``asyncio.timeout``."""

    key = "bare-asyncio"
    label = "bare asyncio loop (ceiling)"
    role = "ceiling"

    def __init__(self, workload: Workload, recorder: Recorder, prefix: str) -> None:
        super().__init__(workload, recorder, prefix)
        self.queue: asyncio.Queue[tuple[Any, tuple[Any, ...]]] = asyncio.Queue()

    async def enqueue_one(self, index: int) -> None:
        self.queue.put_nowait((self._noop, (index,)))

    async def _noop(self, index: int) -> None:
        self.recorder.mark(index)

    async def _consume(self) -> None:
        queue = self.queue
        while True:
            handler, args = await queue.get()
            async with asyncio.timeout(JOB_TIMEOUT):
                await handler(*args)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            for _ in range(self.workload.concurrency):
                tg.start_soon(self._consume)
            yield
            tg.cancel_scope.cancel()


class BareAnyioLoop(BareLoop):
    """The same loop with an anyio ``CancelScope`` (a deadline) per job instead of ``asyncio.timeout``.

    Not the ceiling: it shows what the per-job anyio cancel scope that asyncjobs is built on costs
    by itself, so the rest of the gap to the ceiling is the runtime's own work.
    """

    key = "bare-anyio"
    label = "bare loop, anyio scope per job"
    role = "raw"

    async def _consume(self) -> None:
        queue = self.queue
        loop = asyncio.get_running_loop()
        while True:
            handler, args = await queue.get()
            with anyio.CancelScope(deadline=loop.time() + JOB_TIMEOUT):
                await handler(*args)


class AsyncJobsMemory(AsyncJobsSystem):
    """asyncjobs on its in-memory broker, the full worker and middleware chain."""

    key = "asyncjobs-memory"
    label = "asyncjobs memory://"

    def __init__(self, workload: Workload, recorder: Recorder, prefix: str) -> None:
        super().__init__(workload, recorder, prefix, f"memory://{prefix}")


class TaskiqInMemory(System):
    """taskiq's ``InMemoryBroker``: ``kiq`` starts the handler as a task at once (no queue, no worker).

    Its enqueue figure is the cost of ``kiq``; its drain is the time those tasks take to run.
    """

    key = "taskiq-memory"
    label = "taskiq InMemoryBroker"
    note = "taskiq InMemoryBroker runs each job as its own asyncio task on kiq (no queue, no concurrency limit)"

    async def check(self) -> str | None:
        try:
            import taskiq  # noqa: F401
        except ImportError:
            return "taskiq is not installed (pip install -r benchmarks/requirements.txt)"
        return None

    async def setup(self) -> None:
        from taskiq import InMemoryBroker

        self.broker = InMemoryBroker()
        recorder = self.recorder

        async def noop(index: int) -> None:
            recorder.mark(index)

        self.task = self.broker.task(task_name="bench.noop")(noop)
        await self.broker.startup()

    async def enqueue_one(self, index: int) -> None:
        await self.task.kiq(index)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        yield

    async def cleanup(self) -> None:
        broker = getattr(self, "broker", None)
        if broker is not None:
            await broker.wait_all()
            await broker.shutdown()


SYSTEMS: list[type[System]] = [BareLoop, BareAnyioLoop, AsyncJobsMemory, TaskiqInMemory]

"""Shared pieces of the peer scenarios: a taskiq broker run by an in-process ``Receiver``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from benchmarks.core import System, in_background


class TaskiqReceiver(System):
    """A taskiq broker: ``kiq`` to enqueue, taskiq's own ``Receiver`` (as ``taskiq worker`` runs it) to work.

    The receiver runs in this process with ``max_async_tasks`` = the concurrency.
    """

    def make_broker(self) -> Any:
        """The taskiq broker of this scenario (not started)."""
        raise NotImplementedError

    async def setup(self) -> None:
        self.broker = self.make_broker()
        self.broker.is_worker_process = True  # one broker object produces and consumes, started once
        recorder = self.recorder

        async def noop(index: int) -> None:
            recorder.mark(index)

        self.task = self.broker.task(task_name="bench.noop")(noop)
        await self.broker.startup()

    async def enqueue_one(self, index: int) -> None:
        await self.task.kiq(index)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        import asyncio

        from taskiq.receiver import Receiver

        receiver = Receiver(self.broker, max_async_tasks=self.workload.concurrency, run_startup=False)
        finish = asyncio.Event()
        async with in_background(lambda: receiver.listen(finish), finish.set):
            yield

    async def cleanup(self) -> None:
        broker = getattr(self, "broker", None)
        if broker is not None:
            await broker.shutdown()

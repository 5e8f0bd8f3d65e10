"""Run a worker in the test's task group and wait for conditions with bounded time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from asyncjobs import App, Worker, WorkerConfig
from asyncjobs.memory import MemoryBroker


def memory_app() -> App:
    """An app on a fresh in-memory broker."""
    return App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))


@asynccontextmanager
async def running(app: App, **config: object) -> AsyncIterator[Worker]:
    """A worker running in the background; stopped (and awaited) on exit."""
    config.setdefault("shutdown_signals", False)
    worker = Worker(app, WorkerConfig(**config))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        try:
            yield worker
        finally:
            if not worker.stopping:
                worker.stop()


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polls an arbitrary condition
            await anyio.sleep(0.02)

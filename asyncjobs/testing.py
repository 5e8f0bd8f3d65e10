"""Run an app's jobs in a test: a real worker in-process, and a way to wait until every job settled.

::

    import asyncjobs.testing

    async def test_welcome_mail() -> None:
        async with asyncjobs.testing.run_worker(app) as w:
            await send_welcome.enqueue("ada@example.com")
            await w.settled()
        assert w.stats.done == 1

The jobs go through everything a deployed worker does: the app's startup and shutdown hooks, its
middleware, dedupe, retry classification, timeouts, attempt counting and dead letters. Two things
differ, both to keep tests fast and independent: retries run at once (their backoff is skipped;
``instant_retries=False`` keeps it), and an app on ``memory://`` gets a private in-memory broker for
the block, so jobs left by another test do not run in this one (enqueue inside the block).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio

from asyncjobs.app import App
from asyncjobs.broker import Broker, DeadLetter
from asyncjobs.config import WorkerConfig
from asyncjobs.job import Job, Outcome
from asyncjobs.memory import MemoryBroker
from asyncjobs.middleware.chain import CallNext
from asyncjobs.settle import WorkerStats
from asyncjobs.worker import Worker

__all__ = ["RunningWorker", "run_worker"]

_POLL = 0.01  # seconds between two looks at the broker while waiting for jobs to settle


class RunningWorker:
    """The worker :func:`run_worker` runs; wait with :meth:`settled`, then look at :attr:`stats`."""

    def __init__(self, app: App, worker: Worker, failed: list[BaseException]) -> None:
        self.app = app
        self.worker = worker
        self.broker = worker.broker  # the block's (the app's own broker is restored after it)
        self.queues: tuple[str, ...] = worker.config.queues
        self._failed = failed  # what the worker's run raised, if it did

    @property
    def stats(self) -> WorkerStats:
        """What the worker did so far: done, retried, timed out, dead, skipped (duplicates)..."""
        return self.worker.stats

    async def settled(self, within: float = 10.0) -> WorkerStats:
        """Wait until every job on the worker's queues is done or dead-lettered; return :attr:`stats`.

        Jobs the handlers enqueue meanwhile are waited for too. A job scheduled for later (``delay``,
        ``at``, or a backoff with ``instant_retries=False``) keeps it waiting: after ``within``
        seconds it raises :class:`TimeoutError` saying how many jobs are ready, scheduled and running.
        """
        ready = scheduled = running = 0
        with anyio.move_on_after(within):
            while True:
                if self._failed:
                    raise self._failed[0]
                ready = scheduled = running = 0
                for queue in self.queues:  # the broker first, then the worker's own leases (see below)
                    counts = await self.broker.stats(queue)
                    ready, scheduled, running = (
                        ready + counts.ready,
                        scheduled + counts.scheduled,
                        running + counts.in_flight,
                    )
                keeper = self.worker.keeper
                held = len(keeper.held) if keeper is not None else 0
                # Nothing at the broker and nothing held: every job the worker took was settled and
                # counted (a job leaves the worker's leases only once its settle is done).
                if ready == scheduled == running == held == 0:
                    return self.stats
                await anyio.sleep(_POLL)
        raise TimeoutError(
            f"jobs not settled after {within:g}s: {ready} ready, {scheduled} scheduled for later, {running} running "
            f"(on {', '.join(self.queues)}); worker so far: {self.stats}"
        )

    async def dead_letters(self) -> list[DeadLetter]:
        """The dead letters of the worker's queues (each with its ``info``: reason, error, attempts).

        Readable after the block too, except from a broker given as a URL (closed with the block).
        """
        letters: list[DeadLetter] = []
        for queue in self.queues:
            letters.extend(await self.broker.list_dead(queue))
        return letters


@asynccontextmanager
async def run_worker(
    app: App,
    *,
    broker: str | Broker | None = None,
    queues: Sequence[str] | None = None,
    instant_retries: bool = True,
    concurrency: int = 10,
    lease_seconds: float = 30.0,
    drain_seconds: float = 1.0,
    start_timeout: float = 10.0,
) -> AsyncIterator[RunningWorker]:
    """Run a worker for ``app`` in this test's event loop for the block; stop it (and wait) on exit.

    ``broker``: the broker for the block (the app's is restored after); by default a private
    in-memory broker when the app is on ``memory://``, else the app's own. ``queues``: what the
    worker serves (default: the queues of the app's tasks, and the app's default queue).
    ``instant_retries``: run retries at once instead of after their backoff. A startup hook that
    fails raises its :class:`~asyncjobs.errors.StartupError` here.
    """
    config = WorkerConfig(
        queues=tuple(queues) if queues else _queues_of(app),
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        drain_seconds=drain_seconds,
        fetch_wait_seconds=0.1,  # a stop is not held up by a long poll
        shutdown_signals=False,
    )
    previous: str | Broker = app._broker if app._broker is not None else app.broker_url
    if broker is None and app.broker_url.startswith("memory:"):
        broker = MemoryBroker(f"memory://testing-{uuid.uuid4().hex}")
    if broker is not None:
        app.use_broker(broker)
    failed: list[BaseException] = []
    try:
        worker = Worker(app, config, middleware=[NoBackoff()] if instant_retries else [])
        running = RunningWorker(app, worker, failed)
        async with _running(worker, failed, start_timeout):
            yield running
    except BaseExceptionGroup as group:  # the test's own failure, not wrapped in the task group's
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        try:
            made = app._broker if isinstance(broker, str) else None  # made here from the URL: closed here
            if made is not None:
                with anyio.CancelScope(shield=True):
                    await made.close()
        finally:
            if broker is not None:
                app.use_broker(previous)
    if failed:
        raise failed[0]


@asynccontextmanager
async def _running(worker: Worker, failed: list[BaseException], start_timeout: float) -> AsyncIterator[None]:
    """``worker`` running in a task group for the block; what its run raised goes to ``failed``."""
    finished = anyio.Event()

    async def serve() -> None:
        try:
            await worker.run()
        except Exception as exc:
            failed.append(exc)
        finally:
            finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with anyio.fail_after(start_timeout):
            while not worker.ready.is_set() and not finished.is_set():  # noqa: ASYNC110 - a thread event
                await anyio.sleep(_POLL)
        if failed:
            raise failed[0]  # a startup hook failed: the worker never started
        try:
            yield
        finally:
            worker.stop()


def _queues_of(app: App) -> tuple[str, ...]:
    return tuple(sorted({spec.options.queue for spec in app.tasks.values()} | {app.default_queue}))


class NoBackoff:
    """A middleware that runs a retry at once: the outcome's delay is dropped (the attempt still counts)."""

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Run the rest of the chain; a ``retry`` outcome comes back with no delay."""
        return await self.wrap(call_next)(job)

    def wrap(self, call_next: CallNext) -> CallNext:
        """This layer around ``call_next``."""

        async def no_backoff(job: Job) -> Outcome:
            outcome = await call_next(job)
            return replace(outcome, delay=0.0) if outcome.kind == "retry" and outcome.delay else outcome

        return no_backoff

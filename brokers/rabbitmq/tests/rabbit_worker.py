"""A worker process for the fault tests: ``python rabbit_worker.py URL LOG CONCURRENCY LEASE``.

Task ``fault.sleepy(seconds)`` sleeps; ``fault.die()`` kills its worker (a poison pill). Every attempt writes ``start ID ATTEMPT DELIVERY_COUNT PID``
and ``end ID OUTCOME PID`` lines to LOG, so a test can count runs across processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import anyio
from asyncjobs_rabbitmq import RabbitBroker

from asyncjobs import App, CallNext, Job, Outcome, Worker, WorkerConfig

QUEUE = "jobs"


class Record:
    """Writes one line when an attempt starts and one when it ends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, line: str) -> None:
        with open(self.path, "a") as log:
            log.write(line + "\n")

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        self.write(f"start {job.envelope.id} {job.attempt} {job.delivery.delivery_count} {os.getpid()}")
        outcome = await call_next(job)
        self.write(f"end {job.envelope.id} {outcome.kind} {os.getpid()}")
        return outcome


def make_app(url: str, log_path: str = os.devnull) -> App:
    """The app: one task on queue ``jobs``."""
    app = App(RabbitBroker(url), middleware=[Record(log_path)])

    @app.task(name="fault.sleepy", queue=QUEUE, timeout=None, max_attempts=10)
    async def sleepy(seconds: float) -> None:
        await anyio.sleep(seconds)

    @app.task(name="fault.die", queue=QUEUE, timeout=None, max_attempts=3)
    async def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # a poison pill: kills its worker every time

    return app


async def main(url: str, log_path: str, concurrency: int, lease: float) -> None:
    app = make_app(url, log_path)
    worker = Worker(app, WorkerConfig(queues=(QUEUE,), concurrency=concurrency, lease_seconds=lease))
    async with app, anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        while not worker.ready.is_set():  # noqa: ASYNC110 - a threading.Event set by the worker
            await anyio.sleep(0.02)
        print("ready", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))

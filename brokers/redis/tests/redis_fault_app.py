"""The app the Redis fault tests run in worker processes.

Every attempt is recorded in a Redis list on the shared test server (``$AJ_FAULT_RECORD`` on
``$AJ_FAULT_REDIS``): ``start ID DELIVERY_COUNT PID`` before the handler and ``end ID
DELIVERY_COUNT PID OUTCOME`` after it, so a test can tell which process ran what, and how often.
"""

from __future__ import annotations

import os

import anyio
from redis.asyncio import Redis

from asyncjobs import App, CallNext, Job, Outcome

RECORD_REDIS = "redis://127.0.0.1:6379/0"


class Recorder:
    """Middleware: record each attempt's start and end."""

    def __init__(self) -> None:
        self._client: Redis | None = None

    async def _record(self, line: str) -> None:
        key = os.environ.get("AJ_FAULT_RECORD")
        if not key:
            return
        if self._client is None:
            self._client = Redis.from_url(os.environ.get("AJ_FAULT_REDIS", RECORD_REDIS))
        await self._client.rpush(key, line)

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Record, run, record."""
        tag = f"{job.id} {job.delivery.delivery_count} {os.getpid()}"
        await self._record(f"start {tag}")
        outcome = await call_next(job)
        with anyio.CancelScope(shield=True):
            await self._record(f"end {tag} {outcome.kind}")
        return outcome


def make_app(broker: str | None = None) -> App:
    """An app with the fault tasks (``broker`` ``None``: from the command line or environment)."""
    app = App(broker, middleware=[Recorder()])

    @app.task(name="fault.nap", timeout=20)
    async def nap(seconds: float) -> None:
        await anyio.sleep(seconds)

    return app


app = make_app()

"""The ledger app: every execution of a handler is a row in a PostgreSQL table of the test's own.

Started by the fault tests as ``asyncjobs worker ledger_app:app --broker URL`` (this directory on
``PYTHONPATH``). Configured by environment:

* ``AJ_LEDGER`` (table): one row per execution: ``job_key``, ``job_id``, ``attempt``,
  ``delivery_count``, ``pid``, ``started`` and ``ended`` (wall clock; ``ended`` NULL while it runs
  or when the process died in it), ``task``.
* ``AJ_SIDE`` (table) and ``AJ_DEDUPE`` (table): ``ledger.charge`` writes its side effect into
  ``AJ_SIDE`` through ``PostgresDedupeStore.transaction()`` (the dedupe table ``AJ_DEDUPE``), so a
  committed side effect and the key's ``done`` are one commit.

Tasks: ``ledger.noop(key)`` (one row, no await in between), ``ledger.nap(key, seconds)``,
``ledger.charge(key, seconds)`` (keyed: run with ``task.options(key=...)``),
``ledger.pill(key)`` (records its start, then ``os._exit(3)``: a poison pill),
``ledger.block(key, seconds)`` (a keyed charge that blocks the event loop with ``time.sleep`` on
its first attempt),
``ledger.retry_once(key, delay)`` (asks for a retry after ``delay`` on its first attempt) and
``ledger.soak(key, kind)`` (the soak's mix: ``ok``, ``flaky`` and ``slow`` fail their first
attempt by an error or a timeout, ``perm`` is dead-lettered at once).

Times in the ledger are the real wall clock even when the process runs with a shifted one
(``skewed.py`` keeps the real ``time.time`` as ``time.unskewed_time``).
"""

from __future__ import annotations

import contextvars
import os
import random
import time
from typing import Any

import anyio

from asyncjobs import App, CallNext, Job, Outcome, PermanentError, Retry
from asyncjobs.dedupe.postgres import PostgresDedupeStore
from asyncjobs.middleware.dedupe import DedupeMiddleware

POSTGRES_URL = os.environ.get("AJ_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LEDGER = os.environ.get("AJ_LEDGER", "ledger")
SIDE = os.environ.get("AJ_SIDE", "ledger_side")
DEDUPE = os.environ.get("AJ_DEDUPE", "ledger_dedupe")
QUEUE = "default"
PID = os.getpid()
now = getattr(time, "unskewed_time", time.time)  # the real wall clock, also under skewed.py

_job: contextvars.ContextVar[Job] = contextvars.ContextVar("ledger_job")

DDL = """
CREATE TABLE IF NOT EXISTS "{ledger}" (
    n bigserial PRIMARY KEY, job_key text NOT NULL, job_id text NOT NULL, task text NOT NULL,
    attempt int NOT NULL, delivery_count int NOT NULL, pid int NOT NULL,
    started double precision NOT NULL, ended double precision);
CREATE INDEX IF NOT EXISTS "{ledger}_key" ON "{ledger}" (job_key);
CREATE TABLE IF NOT EXISTS "{side}" (n bigserial PRIMARY KEY, job_key text NOT NULL, pid int NOT NULL);
"""


class Context:
    """Outermost middleware: makes the attempt (id, attempt number, delivery count) visible to the handler."""

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        token = _job.set(job)
        try:
            return await call_next(job)
        finally:
            _job.reset(token)


class Ledger:
    """The connection pool of the ledger (opened on first use, in the worker's loop)."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._lock: anyio.Lock | None = None

    async def pool(self) -> Any:
        if self._pool is None:
            from psycopg_pool import AsyncConnectionPool

            self._lock = self._lock or anyio.Lock()
            async with self._lock:
                if self._pool is None:
                    pool = AsyncConnectionPool(
                        POSTGRES_URL, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
                    )
                    await pool.open(wait=True, timeout=10)
                    self._pool = pool
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def start(self, key: str, ended: bool = False) -> int:
        job = _job.get()
        started = now()
        pool = await self.pool()
        async with pool.connection() as conn:
            cur = await conn.execute(
                f'INSERT INTO "{LEDGER}" (job_key, job_id, task, attempt, delivery_count, pid, started, ended) '
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING n",
                (
                    key,
                    job.envelope.id,
                    job.envelope.task,
                    job.attempt,
                    job.delivery.delivery_count,
                    PID,
                    started,
                    started if ended else None,
                ),
            )
            row = await cur.fetchone()
            return int(row[0])

    async def end(self, n: int) -> None:
        pool = await self.pool()
        async with pool.connection() as conn:
            await conn.execute(f'UPDATE "{LEDGER}" SET ended = %s WHERE n = %s', (now(), n))


ledger = Ledger()
store = PostgresDedupeStore(POSTGRES_URL, table=DEDUPE, max_connections=4)
# The dedupe layer placed by hand (docs/dedupe.md) for a short claim grace: a killed worker's keys
# are free again 1 s after the job's timeout, so the storm's recovery is measured in seconds.
app = App(
    middleware=[Context(), DedupeMiddleware(store, grace_seconds=1.0, max_defer_seconds=0.5)],
    enqueue_guard=store,
)


@app.on_shutdown
async def close_pools() -> None:
    """After the last settle: the pools' tasks would otherwise keep the command waiting for them at exit."""
    await ledger.close()
    await store.close()


@app.task(name="ledger.noop", timeout=30, max_attempts=5)
async def noop(key: str) -> None:
    await ledger.start(key, ended=True)


@app.task(name="ledger.nap", timeout=30, max_attempts=10)
async def nap(key: str, seconds: float) -> None:
    n = await ledger.start(key)
    await anyio.sleep(seconds)
    await ledger.end(n)


@app.task(name="ledger.charge", timeout=3, max_attempts=10)
async def charge(key: str, seconds: float) -> None:
    n = await ledger.start(key)
    await anyio.sleep(seconds)
    async with store.transaction() as conn:  # the side effect and the key's done commit together
        await conn.execute(f'INSERT INTO "{SIDE}" (job_key, pid) VALUES (%s, %s)', (key, PID))
    await ledger.end(n)


@app.task(name="ledger.pill", timeout=30, max_attempts=3)
async def pill(key: str) -> None:
    await ledger.start(key)
    await anyio.sleep(0.05)  # let the rows of its neighbours land, then die like a segfault
    os._exit(3)


@app.task(name="ledger.block", timeout=20, max_attempts=10)
async def block(key: str, seconds: float) -> None:
    n = await ledger.start(key)
    if _job.get().attempt == 1:  # the first attempt only: a redelivery runs normally
        time.sleep(seconds)  # noqa: ASYNC251 - the point: a handler that blocks the event loop
    async with store.transaction() as conn:
        await conn.execute(f'INSERT INTO "{SIDE}" (job_key, pid) VALUES (%s, %s)', (key, PID))
    await ledger.end(n)


@app.task(name="ledger.retry_once", timeout=10, max_attempts=5)
async def retry_once(key: str, delay: float) -> None:
    n = await ledger.start(key)
    await ledger.end(n)
    if _job.get().attempt == 1:
        raise Retry("first attempt asks for a retry", delay=delay)


@app.task(name="ledger.soak", timeout=3.0, max_attempts=4)
async def soak(key: str, kind: str) -> None:
    first = _job.get().attempt == 1
    n = await ledger.start(key)
    if kind == "slow" and first:
        await anyio.sleep(4.0)  # past the 3 s timeout: cancelled, retried
    await anyio.sleep(random.uniform(0.005, 0.05))
    await ledger.end(n)
    if kind == "flaky" and first:
        raise ConnectionError("flaky dependency")
    if kind == "perm":
        raise PermanentError("this job can never succeed")

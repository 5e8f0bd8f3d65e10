"""The PostgreSQL result store, for ``amqp://`` users (or anyone) whose data lives in PostgreSQL.

Needs ``asyncjobs[postgres]`` (psycopg 3 and its pool). One table (``table``, created on first
use): a row per job with its record (``doc``, JSON), its history, its expiry and its cancel mark.
:meth:`PostgresResultStore.wait` polls the row with a bounded backoff (50 ms doubling to 1 s), so
a waiter costs at most one small query a second. Expiry times are the writers' wall clocks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, LiteralString, cast

import anyio

from asyncjobs.clock import monotonic, wall_time
from asyncjobs.errors import ConfigError
from asyncjobs.results.store import (
    CANCEL_TTL,
    FINAL,
    HISTORY_LIMIT,
    MARKS_LISTED,
    MAX_RESULT_BYTES,
    Write,
    history_entry,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow
    from psycopg_pool import AsyncConnectionPool

    Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_POLL = (0.05, 1.0)  # first and longest wait between two reads of a job's row

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    id text PRIMARY KEY,
    doc jsonb NOT NULL DEFAULT '{}'::jsonb,
    history jsonb NOT NULL DEFAULT '[]'::jsonb,
    expires_at double precision NOT NULL DEFAULT 0,
    cancel_until double precision
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at)
"""
_SWEEP_EVERY = 100  # heartbeats between two deletes of expired rows (by each worker)

# Merge a record: an expired row starts afresh; history keeps its last HISTORY_LIMIT entries.
_MERGE = f"""
INSERT INTO {{table}} AS t (id, doc, history, expires_at) VALUES (%(id)s, %(doc)s, %(entry)s, %(expires)s)
ON CONFLICT (id) DO UPDATE SET
    doc = CASE WHEN t.expires_at <= %(now)s THEN excluded.doc ELSE t.doc || excluded.doc END,
    history = (
        SELECT COALESCE(jsonb_agg(e ORDER BY n), '[]'::jsonb) FROM (
            SELECT e, n FROM jsonb_array_elements(
                CASE WHEN t.expires_at <= %(now)s THEN '[]'::jsonb ELSE t.history END || excluded.history
            ) WITH ORDINALITY AS x(e, n) ORDER BY n DESC LIMIT {HISTORY_LIMIT}
        ) AS kept
    ),
    expires_at = excluded.expires_at
RETURNING cancel_until
"""

_QUEUED = """
INSERT INTO {table} AS t (id, doc, history, expires_at) VALUES (%(id)s, %(doc)s, %(entry)s, %(expires)s)
ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, history = excluded.history, expires_at = excluded.expires_at
WHERE t.expires_at <= %(now)s
"""


class PostgresResultStore:
    """Job records and cancel marks in one table of the database at ``conninfo``.

    ``conninfo`` is a ``postgresql://`` URL or a libpq connection string. Connections come from a
    pool of at most ``max_connections``, opened on first use.
    """

    local = False

    def __init__(
        self,
        conninfo: str,
        *,
        table: str = "asyncjobs_jobs",
        max_connections: int = 10,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        if not _NAME.match(table):
            raise ConfigError(f"table must be a plain SQL identifier (letters, digits, _), got {table!r}")
        self.conninfo = conninfo
        self.table = table
        self.max_result_bytes = max_result_bytes
        self._max = max_connections
        self._pool: Pool | None = None
        self._lock = anyio.Lock()
        self._beats = 0

    async def _connection_pool(self) -> Pool:
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                try:
                    from psycopg_pool import AsyncConnectionPool
                except ImportError:
                    raise ConfigError(
                        "the PostgreSQL result store needs psycopg: pip install 'asyncjobs[postgres]'"
                    ) from None
                pool: Pool = AsyncConnectionPool(
                    self.conninfo, min_size=1, max_size=self._max, kwargs={"autocommit": True}, open=False
                )
                await pool.open(wait=True, timeout=10)
                async with pool.connection() as conn:
                    await conn.execute(self._sql(_CREATE))
                self._pool = pool
        return self._pool

    def _sql(self, text: str) -> LiteralString:
        # the table name was checked against _NAME: safe to place in the statement
        named = text.replace("{table}", f'"{self.table}"').replace("{index}", f'"{self.table}_expires"')
        statement: LiteralString = named  # type: ignore[assignment,unused-ignore]
        return statement

    @staticmethod
    def _params(job_id: str, fields: Mapping[str, Any], ttl: float) -> dict[str, Any]:
        now = wall_time()
        entry = [history_entry(fields)] if "status" in fields else []
        return {
            "id": job_id,
            "doc": json.dumps(dict(fields)),
            "entry": json.dumps(entry),
            "expires": now + ttl,
            "now": now,
        }

    async def queued(self, jobs: Sequence[tuple[str, Mapping[str, Any]]], ttl: float) -> None:
        """See :meth:`ResultStore.queued`."""
        if not jobs:
            return
        pool = await self._connection_pool()
        async with pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(self._sql(_QUEUED), [self._params(i, f, ttl) for i, f in jobs])

    async def _merge(self, job_id: str, fields: Mapping[str, Any], ttl: float, extra: str = "") -> float | None:
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(
                self._sql(_MERGE.replace("RETURNING", f"{extra} RETURNING")), self._params(job_id, fields, ttl)
            )
            row = await cur.fetchone()
        return cast(float | None, row[0]) if row else None

    async def started(self, job_id: str, fields: Mapping[str, Any], ttl: float) -> bool:
        """See :meth:`ResultStore.started`."""
        until = await self._merge(job_id, fields, ttl)
        return until is not None and until > wall_time()

    async def write(self, job_id: str, fields: Mapping[str, Any], ttl: float, *, final: bool = False) -> None:
        """See :meth:`ResultStore.write`."""
        await self._merge(job_id, fields, ttl, ", cancel_until = NULL" if final else "")

    async def write_many(self, writes: Sequence[Write]) -> None:
        """See :meth:`ResultStore.write_many`: the upserts on one connection, in one transaction."""
        if not writes:
            return
        pool = await self._connection_pool()
        final = [self._params(i, f, ttl) for i, f, ttl, last in writes if last]
        other = [self._params(i, f, ttl) for i, f, ttl, last in writes if not last]
        async with pool.connection() as conn, conn.cursor() as cur:
            if final:
                await cur.executemany(self._sql(_MERGE.replace("RETURNING", ", cancel_until = NULL RETURNING")), final)
            if other:
                await cur.executemany(self._sql(_MERGE), other)

    async def beat(
        self, progress: Mapping[str, Mapping[str, Any]], held: Sequence[str], ttl: float
    ) -> tuple[set[str], frozenset[str] | None]:
        """See :meth:`ResultStore.beat`: the progress upserts and one query, on one connection."""
        pool = await self._connection_pool()
        now = wall_time()
        self._beats += 1
        async with pool.connection() as conn:
            if self._beats % _SWEEP_EVERY == 1:  # the first beat, then every so often: forget what expired
                await conn.execute(
                    self._sql(
                        "DELETE FROM {table} WHERE expires_at < %(now)s AND (cancel_until IS NULL OR cancel_until < %(now)s)"
                    ),
                    {"now": now},
                )
            if progress:
                async with conn.cursor() as cur:
                    await cur.executemany(self._sql(_MERGE), [self._params(i, f, ttl) for i, f in progress.items()])
            cur = await conn.execute(
                self._sql(
                    "SELECT COALESCE(array_agg(id) FILTER (WHERE id = ANY(%(held)s)), '{}'), "
                    "(array_agg(id))[1:%(listed)s], count(*) FROM {table} WHERE cancel_until > %(now)s"
                ),
                {"held": list(held), "now": now, "listed": MARKS_LISTED},
            )
            row = cast(tuple[Any, Any, Any], await cur.fetchone())
        return set(row[0]), frozenset(row[1] or ()) if row[2] <= MARKS_LISTED else None

    async def cancelled(self, job_id: str) -> bool:
        """See :meth:`ResultStore.cancelled`."""
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(self._sql("SELECT cancel_until FROM {table} WHERE id = %s"), (job_id,))
            row = await cur.fetchone()
        return bool(row and row[0] is not None and row[0] > wall_time())

    async def cancel(self, job_id: str, ttl: float = CANCEL_TTL) -> None:
        """See :meth:`ResultStore.cancel`."""
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            await conn.execute(
                self._sql(
                    "INSERT INTO {table} (id, cancel_until) VALUES (%s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET cancel_until = excluded.cancel_until"
                ),
                (job_id, wall_time() + ttl),
            )

    async def get(self, job_id: str) -> tuple[dict[str, Any] | None, bool]:
        """See :meth:`ResultStore.get`."""
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(
                self._sql("SELECT doc, history, expires_at, cancel_until FROM {table} WHERE id = %s"), (job_id,)
            )
            row = await cur.fetchone()
        if row is None:
            return None, False
        doc, history, expires, until = row
        now = wall_time()
        marked = until is not None and until > now
        if expires <= now or not doc:
            return None, marked
        return {**doc, "history": history}, marked

    async def wait(self, job_id: str, seconds: float) -> None:
        """See :meth:`ResultStore.wait`: reads the row with a bounded backoff until it is final."""
        deadline, step = monotonic() + seconds, _POLL[0]
        while (left := deadline - monotonic()) > 0:
            await anyio.sleep(min(step, left))
            step = min(step * 2, _POLL[1])
            record, _ = await self.get(job_id)
            if record is not None and record.get("status") in FINAL:
                return

    async def close(self) -> None:
        """Close the connection pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

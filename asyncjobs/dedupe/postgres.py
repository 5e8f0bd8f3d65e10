"""The PostgreSQL dedupe store, for jobs whose side effects live in PostgreSQL.

Needs the ``postgres`` extra (psycopg 3 and its pool). Its point is :meth:`PostgresDedupeStore.transaction`:
a handler writes its side effect and marks its key ``done`` in one transaction, so a worker that
dies after the commit but before the broker's ack leaves a ``done`` key, and the redelivered job
is skipped; a worker that dies before the commit leaves nothing, and the job runs again. Times
come from the server's clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, LiteralString, cast

import anyio

from asyncjobs.dedupe.store import HISTORY_LIMIT, Claim, DedupeRecord, Status, claimable, current_claim, event
from asyncjobs.errors import AsyncJobsError, ConfigError
from asyncjobs.extras import install_command

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow
    from psycopg_pool import AsyncConnectionPool

    Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COLUMNS = "key, status, owner, job_id, attempt, created_at, updated_at, lease_until, expires_at, history"


class ClaimLostError(AsyncJobsError):
    """The attempt no longer holds its key (its claim expired and another attempt took it).

    Raised by :meth:`PostgresDedupeStore.transaction` before the commit, so the side effect is
    rolled back; the job is retried and its next attempt finds the key done (or runs it).
    """


class AlreadyDoneError(AsyncJobsError):
    """``transaction(key)`` outside a claimed job found the key already done or held."""


class PostgresDedupeStore:
    """Dedupe records in one table (``table``, created on first use) of the database at ``conninfo``.

    ``conninfo`` is a ``postgresql://`` URL or a libpq connection string. Connections come from a
    pool of at most ``max_connections``, opened on first use.
    """

    def __init__(self, conninfo: str, *, table: str = "asyncjobs_dedupe", max_connections: int = 10) -> None:
        if not _NAME.match(table):
            raise ConfigError(f"table must be a plain SQL identifier (letters, digits, _), got {table!r}")
        self.conninfo = conninfo
        self.table = table
        self._max = max_connections
        self._pool: Pool | None = None
        self._created = False
        self._lock = anyio.Lock()

    async def _connection_pool(self, *, create: bool = True) -> Pool:
        """The pool, opened on first use; ``create``: the table is created first if missing (reads pass ``False``)."""
        if self._pool is not None and (self._created or not create):
            return self._pool
        async with self._lock:
            if self._pool is None:
                try:
                    from psycopg_pool import AsyncConnectionPool
                except ImportError:
                    raise ConfigError(f"the PostgreSQL dedupe store needs psycopg: {install_command('postgres')}") from None
                pool: Pool = AsyncConnectionPool(
                    self.conninfo, min_size=1, max_size=self._max, kwargs={"autocommit": True}, open=False
                )
                await pool.open(wait=True, timeout=10)
                self._pool = pool
            if create and not self._created:
                async with self._pool.connection() as conn:
                    await conn.execute(self._sql(_CREATE))
                self._created = True
        return self._pool

    def _sql(self, text: str) -> LiteralString:
        # the table name was checked against _NAME: safe to place in the statement
        statement: LiteralString = text.replace("{table}", f'"{self.table}"')  # type: ignore[assignment,unused-ignore]
        return statement

    @asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[tuple[AsyncConnection[TupleRow], float, dict[str, Any] | None]]:
        """A transaction holding ``key``'s row lock (the row inserted if missing), the server time and the live record."""
        pool = await self._connection_pool()
        async with pool.connection() as conn, conn.transaction():
            yield conn, *await self._lock_row(conn, key)

    async def _lock_row(self, conn: AsyncConnection[TupleRow], key: str) -> tuple[float, dict[str, Any] | None]:
        cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        now = float(cast(tuple[Any], await cur.fetchone())[0])
        await conn.execute(self._sql(_INSERT_PLACEHOLDER), (key, now, now, now))
        cur = await conn.execute(self._sql(f"SELECT {_COLUMNS} FROM {{table}} WHERE key = %s FOR UPDATE"), (key,))
        row = await cur.fetchone()
        doc = dict(zip(_COLUMNS.split(", "), row, strict=True)) if row else None
        if doc is None or doc["status"] == "" or doc["expires_at"] <= now:
            return now, None  # missing, a placeholder, or expired: as good as absent
        return now, doc

    async def _write(
        self, conn: AsyncConnection[TupleRow], key: str, old: dict[str, Any] | None, **fields: Any
    ) -> None:
        entry = fields.pop("entry")
        history = [*(old["history"] if old else []), entry][-HISTORY_LIMIT:]
        created = old["created_at"] if old else fields["updated_at"]
        await conn.execute(
            self._sql(
                "UPDATE {table} SET status = %s, owner = %s, job_id = %s, attempt = %s, created_at = %s, "
                "updated_at = %s, lease_until = %s, expires_at = %s, history = %s WHERE key = %s"
            ),
            (
                fields["status"],
                fields["owner"],
                fields["job_id"],
                fields["attempt"],
                created,
                fields["updated_at"],
                fields["lease_until"],
                fields["expires_at"],
                json.dumps(history),
                key,
            ),
        )

    async def claim(
        self, key: str, owner: str, *, lease_seconds: float, ttl: float, job_id: str | None = None, attempt: int = 1
    ) -> Claim:
        """See :meth:`DedupeStore.claim`."""
        async with self._locked(key) as (conn, now, old):
            if old is not None and not claimable(old["status"], old["owner"], old["lease_until"], now, owner):
                record = _record(old)
                return Claim("done" if old["status"] == "done" else "running", record.lease_until, record)
            until = now + lease_seconds
            await self._write(
                conn,
                key,
                old,
                status="running",
                owner=owner,
                job_id=job_id,
                attempt=attempt,
                updated_at=now,
                lease_until=until,
                expires_at=max(now + ttl, until),
                entry=event("claimed", now, owner, job_id, attempt, lease_until=until),
            )
            return Claim("claimed", until)

    async def extend(self, key: str, owner: str, lease_seconds: float) -> bool:
        """See :meth:`DedupeStore.extend`."""
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(
                self._sql(
                    "UPDATE {table} SET lease_until = extract(epoch FROM clock_timestamp()) + %s, "
                    "expires_at = greatest(expires_at, extract(epoch FROM clock_timestamp()) + %s) "
                    "WHERE key = %s AND owner = %s AND status = 'running'"
                ),
                (lease_seconds, lease_seconds, key, owner),
            )
            return cur.rowcount == 1

    async def extend_many(self, claims: Sequence[tuple[str, str]], lease_seconds: float) -> list[bool]:
        """:meth:`extend` of every ``(key, owner)`` pair, in one statement."""
        if not claims:
            return []
        pool = await self._connection_pool()
        rows = ", ".join(["(%s, %s)"] * len(claims))
        params: list[Any] = [lease_seconds, lease_seconds]
        for key, owner in claims:
            params += (key, owner)
        async with pool.connection() as conn:
            cur = await conn.execute(
                self._sql(
                    "UPDATE {table} AS t SET lease_until = extract(epoch FROM clock_timestamp()) + %s, "
                    "expires_at = greatest(t.expires_at, extract(epoch FROM clock_timestamp()) + %s) "
                    f"FROM (VALUES {rows}) AS v(key, owner) "
                    "WHERE t.key = v.key AND t.owner = v.owner AND t.status = 'running' RETURNING t.key, t.owner"
                ),
                params,
            )
            extended = {(row[0], row[1]) for row in await cur.fetchall()}
        return [(key, owner) in extended for key, owner in claims]

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        """See :meth:`DedupeStore.complete`."""
        async with self._locked(key) as (conn, now, old):
            return await self._finish(conn, key, owner, ttl, "done", "", now, old)

    async def release(self, key: str, owner: str, ttl: float, *, status: Status = "retrying", error: str = "") -> bool:
        """See :meth:`DedupeStore.release`."""
        async with self._locked(key) as (conn, now, old):
            return await self._finish(conn, key, owner, ttl, status, error[:2000], now, old)

    async def _finish(
        self,
        conn: AsyncConnection[TupleRow],
        key: str,
        owner: str,
        ttl: float,
        status: Status,
        error: str,
        now: float,
        old: dict[str, Any] | None,
    ) -> bool:
        if old is None or old["owner"] != owner:
            return False
        if old["status"] != "running":
            return bool(old["status"] == status == "done")
        await self._write(
            conn,
            key,
            old,
            status=status,
            owner=owner,
            job_id=old["job_id"],
            attempt=old["attempt"],
            updated_at=now,
            lease_until=None,
            expires_at=now + ttl,
            entry=event(status, now, owner, old["job_id"], old["attempt"], error=error),
        )
        return True

    async def claim_enqueue(self, key: str, ttl: float) -> bool:
        """See :meth:`DedupeStore.claim_enqueue`."""
        async with self._locked(key) as (conn, now, old):
            if old is not None and old["status"] != "dead":
                return False
            await self._write(
                conn,
                key,
                old,
                status="pending",
                owner=None,
                job_id=None,
                attempt=0,
                updated_at=now,
                lease_until=None,
                expires_at=now + ttl,
                entry=event("enqueued", now, None, None, 0),
            )
            return True

    async def release_enqueue(self, key: str) -> None:
        """See :meth:`DedupeStore.release_enqueue`."""
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            await conn.execute(self._sql("DELETE FROM {table} WHERE key = %s AND status = 'pending'"), (key,))

    async def get(self, key: str) -> DedupeRecord | None:
        """See :meth:`DedupeStore.get`. Creates nothing: a table that does not exist holds no record."""
        from psycopg.errors import UndefinedTable

        pool = await self._connection_pool(create=False)
        async with pool.connection() as conn:
            try:
                cur = await conn.execute(
                    self._sql(
                        f"SELECT {_COLUMNS} FROM {{table}} WHERE key = %s AND status <> '' "
                        "AND expires_at > extract(epoch FROM clock_timestamp())"
                    ),
                    (key,),
                )
            except UndefinedTable:
                return None
            row = await cur.fetchone()
        return _record(dict(zip(_COLUMNS.split(", "), row, strict=True))) if row else None

    async def delete(self, key: str) -> bool:
        """See :meth:`DedupeStore.delete`."""
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(self._sql("DELETE FROM {table} WHERE key = %s"), (key,))
            return cur.rowcount == 1

    async def purge_expired(self) -> int:
        """Delete expired records (they are ignored anyway); returns how many. Run it now and then."""
        pool = await self._connection_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(
                self._sql("DELETE FROM {table} WHERE expires_at <= extract(epoch FROM clock_timestamp())")
            )
            return cur.rowcount

    async def close(self) -> None:
        """Close the connection pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def transaction(
        self, key: str | None = None, *, ttl: float = 3600.0
    ) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A transaction whose commit also marks the job's key ``done``.

        Inside a job (the dedupe middleware claimed its key), ``key`` defaults to that job's key
        and the commit happens only while the attempt still holds it: otherwise
        :class:`ClaimLostError` is raised and everything written is rolled back. Outside a job,
        ``key`` is required and the commit happens only if the key is neither done nor held by a
        live claim (else :class:`AlreadyDoneError`, rolled back). An exception in the block rolls
        back as usual.
        """
        claim = current_claim()
        if claim is not None and claim.store is not self:
            claim = None
        if key is None:
            if claim is None:
                raise ConfigError("transaction() without a key works only inside a job claimed by this store")
            key = claim.key
        owner = claim.owner if claim is not None and claim.key == key else None
        ttl = claim.ttl if claim is not None and owner is not None else ttl
        pool = await self._connection_pool()
        async with pool.connection() as conn, conn.transaction():
            yield conn
            now, old = await self._lock_row(conn, key)
            if owner is not None:
                if not await self._finish(conn, key, owner, ttl, "done", "", now, old):
                    raise ClaimLostError(
                        f"key {key!r} is no longer held by this attempt; the transaction is rolled back"
                    )
            elif old is not None and not claimable(old["status"], old["owner"], old["lease_until"], now, ""):
                raise AlreadyDoneError(f"key {key!r} is already {old['status']}; the transaction is rolled back")
            else:
                await self._write(
                    conn,
                    key,
                    old,
                    status="done",
                    owner=None,
                    job_id=None,
                    attempt=0,
                    updated_at=now,
                    lease_until=None,
                    expires_at=now + ttl,
                    entry=event("done", now, None, None, 0),
                )


def _record(doc: Mapping[str, Any]) -> DedupeRecord:
    return DedupeRecord(
        key=doc["key"],
        status=doc["status"],
        owner=doc["owner"],
        job_id=doc["job_id"],
        attempt=doc["attempt"],
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        lease_until=doc["lease_until"],
        expires_at=doc["expires_at"],
        history=tuple(doc["history"] or ()),
    )


_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    key text PRIMARY KEY,
    status text NOT NULL,
    owner text,
    job_id text,
    attempt integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    lease_until double precision,
    expires_at double precision NOT NULL,
    history jsonb NOT NULL DEFAULT '[]'::jsonb
)
"""

# A placeholder row (status '') gives FOR UPDATE something to lock when the key is new; it reads
# as absent and is overwritten in the same transaction.
_INSERT_PLACEHOLDER = (
    "INSERT INTO {table} (key, status, created_at, updated_at, expires_at) VALUES (%s, '', %s, %s, %s) "
    "ON CONFLICT (key) DO NOTHING"
)

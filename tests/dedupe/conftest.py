"""Dedupe store fixtures: every store kind, isolated per test and cleaned up afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from asyncjobs.dedupe import DedupeStore, MemoryDedupeStore
from tests.harness import require_server

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def anyio_backend() -> str:
    """Stores run on asyncio."""
    return "asyncio"


async def drop_table(table: str) -> None:
    """Drop a test table of the ``test`` database."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')  # type: ignore[arg-type]


@asynccontextmanager
async def redis_store() -> AsyncIterator[DedupeStore]:
    """A Redis store under a key prefix of its own; its keys are deleted afterwards."""
    require_server("redis")
    from redis.asyncio import Redis

    from asyncjobs.dedupe.redis import RedisDedupeStore

    prefix = f"t{uuid.uuid4().hex[:12]}"
    store = RedisDedupeStore.from_url(REDIS_URL, prefix=prefix)
    try:
        yield store
    finally:
        await store.close()
        client = Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@asynccontextmanager
async def postgres_store() -> AsyncIterator[DedupeStore]:
    """A PostgreSQL store on a table of its own in database ``test``, dropped afterwards."""
    require_server("postgres")
    from asyncjobs.dedupe.postgres import PostgresDedupeStore

    table = f"dedupe_{uuid.uuid4().hex[:12]}"
    store = PostgresDedupeStore(POSTGRES_URL, table=table)
    try:
        yield store
    finally:
        await store.close()
        await drop_table(table)


@pytest.fixture(params=["memory", "redis", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[DedupeStore]:
    """Each kind of dedupe store."""
    if request.param == "memory":
        yield MemoryDedupeStore()
        return
    async with (redis_store if request.param == "redis" else postgres_store)() as made:
        yield made

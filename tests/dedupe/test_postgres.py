"""The PostgreSQL store's transaction helper: a side effect and its key commit together, or neither."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from asyncjobs.dedupe.postgres import AlreadyDoneError, ClaimLostError, PostgresDedupeStore
from asyncjobs.dedupe.store import ActiveClaim, reset_current_claim, set_current_claim
from tests.dedupe.conftest import POSTGRES_URL, drop_table, postgres_store

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def pg() -> AsyncIterator[tuple[PostgresDedupeStore, str]]:
    """A store and an empty side-effect table ``effects(note text)``, both dropped afterwards."""
    async with postgres_store() as store:
        assert isinstance(store, PostgresDedupeStore)
        table = f"effects_{uuid.uuid4().hex[:10]}"
        pool = await store._connection_pool()
        async with pool.connection() as conn:
            await conn.execute(f'CREATE TABLE "{table}" (note text)')  # type: ignore[arg-type]
        try:
            yield store, table
        finally:
            await drop_table(table)


async def notes(store: PostgresDedupeStore, table: str) -> list[str]:
    pool = await store._connection_pool()
    async with pool.connection() as conn:
        cur = await conn.execute(f'SELECT note FROM "{table}"')  # type: ignore[arg-type]
        return [str(row[0]) for row in await cur.fetchall()]


async def write_in_job(store: PostgresDedupeStore, table: str, key: str, owner: str, note: str) -> None:
    """What a handler does inside a job whose key the dedupe layer claimed for ``owner``."""
    token = set_current_claim(ActiveClaim(store, key, owner, 60.0))
    try:
        async with store.transaction() as conn:
            await conn.execute(f'INSERT INTO "{table}" (note) VALUES (%s)', (note,))  # type: ignore[arg-type]
    finally:
        reset_current_claim(token)


async def test_the_side_effect_and_the_done_key_commit_together(pg: tuple[PostgresDedupeStore, str]) -> None:
    store, table = pg
    await store.claim("k", "w1", lease_seconds=30, ttl=60, job_id="j")
    await write_in_job(store, table, "k", "w1", "charged")
    assert await notes(store, table) == ["charged"]
    record = await store.get("k")
    assert record is not None
    assert (record.status, record.owner) == ("done", "w1")
    assert await store.complete("k", "w1", 60), "the middleware's own complete afterwards is a no-op"
    assert (await store.claim("k", "w2", lease_seconds=30, ttl=60)).status == "done"


async def test_an_error_in_the_block_rolls_back_the_side_effect_and_keeps_the_claim(
    pg: tuple[PostgresDedupeStore, str],
) -> None:
    store, table = pg
    await store.claim("k", "w1", lease_seconds=30, ttl=60)

    async def declined() -> None:
        token = set_current_claim(ActiveClaim(store, "k", "w1", 60.0))
        try:
            async with store.transaction() as conn:
                await conn.execute(f'INSERT INTO "{table}" (note) VALUES (%s)', ("half",))  # type: ignore[arg-type]
                raise RuntimeError("card declined")
        finally:
            reset_current_claim(token)

    with pytest.raises(RuntimeError):
        await declined()
    assert await notes(store, table) == []
    record = await store.get("k")
    assert record is not None
    assert record.status == "running"


async def test_an_attempt_that_lost_its_claim_cannot_commit(pg: tuple[PostgresDedupeStore, str]) -> None:
    store, table = pg
    await store.claim("k", "slow", lease_seconds=0.2, ttl=60)
    await anyio.sleep(0.3)
    assert (await store.claim("k", "fast", lease_seconds=30, ttl=60)).status == "claimed"
    with pytest.raises(ClaimLostError):
        await write_in_job(store, table, "k", "slow", "late")
    assert await notes(store, table) == []
    await write_in_job(store, table, "k", "fast", "on time")
    assert await notes(store, table) == ["on time"]


async def test_outside_a_job_a_key_commits_once(pg: tuple[PostgresDedupeStore, str]) -> None:
    store, table = pg
    for attempt in range(2):
        try:
            async with store.transaction("import-2026-01") as conn:
                await conn.execute(f'INSERT INTO "{table}" (note) VALUES (%s)', (f"try {attempt}",))  # type: ignore[arg-type]
        except AlreadyDoneError:
            assert attempt == 1
    assert await notes(store, table) == ["try 0"]


async def test_transaction_without_key_outside_a_job_is_refused(pg: tuple[PostgresDedupeStore, str]) -> None:
    from asyncjobs import ConfigError

    store, _ = pg
    with pytest.raises(ConfigError, match="only inside a job"):
        async with store.transaction():
            pass


def test_a_table_name_that_is_not_an_identifier_is_refused() -> None:
    from asyncjobs import ConfigError

    with pytest.raises(ConfigError, match="plain SQL identifier"):
        PostgresDedupeStore(POSTGRES_URL, table="x; DROP TABLE y")

"""Job-handle fixtures: an app on each broker with a result store that fits it, cleaned up afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from asyncjobs import App
from asyncjobs.results import ResultStore
from tests.harness import harnesses, require_server

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

# broker harness, result store ("natural": the broker's own)
KINDS = {
    "memory": ("memory", "natural"),
    "redis": ("redis", "natural"),
    "amqp+redis": ("rabbitmq", "redis"),
    "amqp+postgres": ("rabbitmq", "postgres"),
}


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


async def drop_table(table: str) -> None:
    """Drop a test table of the ``test`` database."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')  # type: ignore[arg-type]


def result_store(kind: str, namespace: str) -> ResultStore | None:
    """The store of ``kind`` in ``namespace`` (``None``: the broker's natural one)."""
    if kind == "redis":
        require_server("redis")
        from asyncjobs.results.redis import RedisResultStore

        return RedisResultStore.from_url(REDIS_URL, prefix=namespace)
    if kind == "postgres":
        require_server("postgres")
        from asyncjobs.results.postgres import PostgresResultStore

        return PostgresResultStore(POSTGRES_URL, table=f"{namespace}_jobs")
    return None


@pytest.fixture(params=sorted(KINDS))
async def app(request: pytest.FixtureRequest) -> AsyncIterator[App]:
    """An app on each broker kind, with its natural result store or (``amqp://``) a Redis or PostgreSQL one."""
    broker_name, store_kind = KINDS[request.param]
    if broker_name in ("redis", "rabbitmq"):
        require_server(broker_name)
    if broker_name not in harnesses():
        pytest.skip(f"the {broker_name} broker package is not installed")
    namespace = f"t{uuid.uuid4().hex[:12]}"
    store = result_store(store_kind, namespace)
    async with harnesses()[broker_name](namespace) as broker:
        application = App(broker, results=store)
        try:
            yield application
        finally:
            if application.results is not None:
                await application.results.close()
            if store_kind == "redis":
                from tests.harness.redis import delete_prefix

                await delete_prefix(namespace)
            if store_kind == "postgres":
                await drop_table(f"{namespace}_jobs")

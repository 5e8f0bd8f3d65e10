"""The result stores' own rules: bounds, expiry, and which store an app gets."""

from __future__ import annotations

import pytest

from asyncjobs import App
from asyncjobs.results import MemoryResultStore
from asyncjobs.results.store import status_of

pytestmark = pytest.mark.anyio


async def test_the_memory_store_keeps_at_most_max_records_dropping_the_oldest() -> None:
    store = MemoryResultStore(max_records=100)
    for n in range(250):
        await store.write(f"job-{n}", {"status": "done", "result": str(n)}, ttl=60, final=True)
    kept = [n for n in range(250) if (await store.get(f"job-{n}"))[0] is not None]
    assert len(kept) <= 100
    assert kept[-1] == 249  # the newest stay
    assert 0 not in kept


async def test_an_expired_record_is_unknown() -> None:
    store = MemoryResultStore()
    await store.write("gone", {"status": "done"}, ttl=0.0, final=True)
    record, marked = await store.get("gone")
    assert status_of("gone", record, marked).state == "unknown"


async def test_an_app_gets_the_store_of_the_broker_it_uses() -> None:
    app = App("memory://stores-a")
    assert app.results is MemoryResultStore.named("stores-a")
    app.use_broker("memory://stores-b")
    assert app.results is MemoryResultStore.named("stores-b")
    mine = MemoryResultStore()
    chosen = App("memory://stores-c", results=mine)
    chosen.use_broker("memory://stores-d")
    assert chosen.results is mine  # a store the app was given stays


def test_the_redis_broker_gets_a_redis_store_on_its_server_and_prefix() -> None:
    pytest.importorskip("asyncjobs_redis")
    from asyncjobs.results.redis import RedisResultStore

    app = App("redis://127.0.0.1:6379/3?prefix=shop")
    store = app.results
    assert isinstance(store, RedisResultStore)
    assert store.prefix == "shop"
    assert App("amqp://guest:guest@127.0.0.1:5672/").results is None

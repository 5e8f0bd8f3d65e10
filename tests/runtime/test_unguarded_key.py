"""An idempotency key on a broker that cannot dedupe at enqueue is never ignored: refused without a store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asyncjobs import App
from asyncjobs.dedupe import MemoryDedupeStore
from asyncjobs.errors import ConfigError
from asyncjobs.task import Task
from tests.harness import require_server

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]
URL = "amqp://guest:guest@127.0.0.1:5672/"


def make_app(namespace: str, **kwargs: Any) -> tuple[App, Task[[str], None]]:
    app = App(f"{URL}?queue_prefix={namespace}.", **kwargs)

    @app.task(name="charge")
    async def charge(invoice: str) -> None:
        """Charge once."""

    return app, charge


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    require_server("rabbitmq")
    from tests.harness.rabbitmq import rabbitmq_harness

    name = f"k{uuid.uuid4().hex[:10]}"
    async with rabbitmq_harness(name) as broker:
        await broker.stats("default")
        broker.topology.names("default")  # type: ignore[attr-defined]  # deleted with the namespace at the end
        yield name


async def test_a_key_without_a_dedupe_store_is_refused_naming_the_fix(namespace: str) -> None:
    app, charge = make_app(namespace)
    async with app:
        with pytest.raises(ConfigError, match=r"key='inv-1'.*amqp:// cannot refuse a duplicate.*App\(dedupe="):
            await charge.options(key="inv-1").enqueue("inv-1")
        assert (await app.broker.stats("default")).ready == 0  # nothing was enqueued
        assert (await charge.enqueue("inv-2")).accepted  # without a key: accepted


async def test_with_a_dedupe_store_the_duplicate_is_refused_at_enqueue(namespace: str) -> None:
    app, charge = make_app(namespace, dedupe=MemoryDedupeStore())
    async with app:
        first = await charge.options(key="inv-1").enqueue("inv-1")
        second = await charge.options(key="inv-1").enqueue("inv-1")
        assert (first.accepted, second.accepted) == (True, False)
        assert (await app.broker.stats("default")).ready == 1

"""The asyncjobs worker on RabbitMQ: retries with backoff through delay buckets, dead letters, replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from asyncjobs_rabbitmq import RabbitBroker

from asyncjobs import App, Backoff, PermanentError, Retry
from asyncjobs.deadletters import DeadFilter, replay
from tests.harness import require_server
from tests.harness.rabbitmq import rabbitmq_harness
from tests.runtime.helpers import eventually, running

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]


@pytest.fixture(params=["quorum", "classic"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RabbitBroker]:
    require_server("rabbitmq")
    async with rabbitmq_harness(f"w{uuid.uuid4().hex[:10]}", request.param) as connected:
        assert isinstance(connected, RabbitBroker)
        yield connected


async def test_retries_back_off_dead_letters_keep_the_reason_and_replay_runs_again(broker: RabbitBroker) -> None:
    app = App(broker)
    calls: dict[str, int] = {}
    broken = {"yes": True}

    @app.task(backoff=Backoff(base=0.3, jitter=0.0), max_attempts=4)
    async def flaky(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1
        if calls[name] < 3:
            raise Retry("not yet")

    @app.task
    async def refuse(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1
        if broken["yes"]:
            raise PermanentError("bad input")

    await flaky.enqueue("f")
    await refuse.enqueue("r")
    async with running(app, concurrency=4, lease_seconds=6.0):
        await eventually(lambda: calls.get("f") == 3 and calls.get("r") == 1, within=15)
        [dead] = await broker.list_dead("default")
        assert (dead.info.reason, dead.info.error_type, dead.info.attempts) == ("permanent", "PermanentError", 1)
        assert "bad input" in dead.info.traceback
        broken["yes"] = False
        assert await replay(broker, "default", DeadFilter()) == 1
        await eventually(lambda: calls.get("r") == 2, within=10)
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.dead) == (0, 0, 0)

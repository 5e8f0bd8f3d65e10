"""Whatever a handler raises, its dead letter keeps bounded text and the body intact, on every broker."""

from __future__ import annotations

import pytest

from asyncjobs import App, Broker
from asyncjobs.retrying import Backoff
from asyncjobs.settle import MESSAGE_LIMIT, TRACEBACK_LIMIT
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio


def deep(n: int) -> None:
    if n:
        deep(n - 1)
    raise ValueError("x" * 70_000)


@pytest.mark.parametrize("size", [70_000, 1_000_000])
async def test_a_huge_error_is_dead_lettered_bounded_and_a_job_beside_it_runs_once(broker: Broker, size: int) -> None:
    app = App(broker)
    ran: list[int] = []

    @app.task(name="loud", max_attempts=2, backoff=Backoff(base=0.01, cap=0.02))
    async def loud(payload: str) -> None:
        if size > 100_000:
            raise RuntimeError("y" * size)
        deep(900)  # a traceback about 1,000 frames deep

    @app.task(name="quiet")
    async def quiet() -> None:
        ran.append(1)

    await loud.enqueue("p" * 100)
    await quiet.enqueue()
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 1 and worker.stats.done == 1, within=30)
    assert ran == [1]
    [dead] = await broker.list_dead("default")
    assert len(dead.info.error_message) <= MESSAGE_LIMIT + 40
    assert "characters cut" in dead.info.error_message
    assert len(dead.info.traceback) <= TRACEBACK_LIMIT + 40
    assert len(dead.info.history) == 2
    assert all(len(str(entry.get("error", ""))) <= 400 for entry in dead.info.history)
    assert b'"p' in dead.body and dead.body.count(b"p") >= 100, "the body is kept as it was"

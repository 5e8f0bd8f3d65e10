"""Messages from producers outside asyncjobs, written straight to the broker: each has a place to go.

Runs on every broker harness (memory://, and the real Redis and RabbitMQ servers).
"""

from __future__ import annotations

import json

import pytest

from asyncjobs import App, Broker
from asyncjobs.broker import OutgoingJob
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio


async def test_a_body_over_the_workers_size_limit_is_dead_lettered_intact_without_running(broker: Broker) -> None:
    app = App(broker, max_payload_bytes=10_000)
    runs: list[int] = []

    @app.task(name="echo")
    async def echo(text: str) -> None:
        runs.append(len(text))

    # A foreign producer knows nothing of the worker's limit: 50 KB of a valid envelope.
    big = json.dumps({"v": 1, "id": "big-1", "task": "echo", "args": ["x" * 50_000]}).encode()
    assert await broker.enqueue([OutgoingJob("big-1", "default", big)]) == [True]
    await echo.enqueue("small")
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 1 and worker.stats.done == 1, within=15)
    assert runs == [5], "the oversize job never ran; the good one did"
    [dead] = await broker.list_dead("default")
    assert dead.body == big
    assert dead.info.reason == "too_large"
    assert "max_payload_bytes=10000" in dead.info.error_message
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, 1)

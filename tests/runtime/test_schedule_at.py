"""``task.options(at=datetime)``: a job held back until a wall-clock time, on every broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from asyncjobs import App, ConfigError
from asyncjobs.broker import Broker
from tests.harness import harnesses, require_server
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
async def scheduled_app(request: pytest.FixtureRequest) -> AsyncIterator[App]:
    """An app on a fresh namespace of each broker that schedules by wall time."""
    name: str = request.param
    if name != "memory":
        require_server(name)
    if name not in harnesses():
        pytest.skip(f"{name} broker package not installed")
    async with harnesses()[name](f"t{uuid.uuid4().hex[:12]}") as broker:
        yield App(broker)


async def test_a_job_enqueued_at_a_datetime_runs_then_and_not_before(scheduled_app: App) -> None:
    app = scheduled_app
    started: list[float] = []

    @app.task(name="at.run")
    async def run() -> None:
        started.append(time.time())

    due = datetime.now(timezone(timedelta(hours=-5))) + timedelta(seconds=1.5)  # any zone: the instant counts
    ref = await run.options(at=due).enqueue()
    assert ref.accepted
    broker: Broker = app.broker
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled) == (0, 1)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 1, within=15)
    assert started[0] >= due.timestamp()
    assert started[0] < due.timestamp() + 5


async def test_a_datetime_already_past_runs_at_once(scheduled_app: App) -> None:
    app = scheduled_app
    ran: list[int] = []

    @app.task(name="at.past")
    async def past() -> None:
        ran.append(1)

    await past.options(at=datetime.now(UTC) - timedelta(hours=1)).enqueue()
    async with running(app) as worker:
        with anyio.fail_after(5):
            await eventually(lambda: worker.stats.done == 1)
    assert ran == [1]


def test_at_needs_a_timezone_aware_datetime_and_excludes_delay() -> None:
    app = App("memory://")

    @app.task(name="at.checks")
    async def checks() -> None:
        pass

    with pytest.raises(ConfigError, match="timezone-aware"):
        checks.options(at=datetime.now())  # naive: which zone is meant is unknown
    with pytest.raises(ConfigError, match="not both"):
        checks.options(at=datetime.now(UTC), delay=5)
    later = datetime.now(UTC) + timedelta(minutes=5)
    env = app.build(checks.spec, checks.options(delay=60).options(at=later)._call, (), {})
    assert env.not_before == later.timestamp()  # the later option wins on a handle made from another
    env = app.build(checks.spec, checks.options(at=later).options(delay=60)._call, (), {})
    assert env.not_before is not None and abs(env.not_before - (time.time() + 60)) < 5

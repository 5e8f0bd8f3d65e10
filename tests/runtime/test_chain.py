"""The middleware onion: layers with and without ``wrap`` compose in order, around the handler."""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from asyncjobs import CallNext, Job, Outcome
from asyncjobs.middleware.retry import RetryMiddleware
from asyncjobs.middleware.timeout import TimeoutMiddleware
from tests.runtime.helpers import eventually, memory_app, running

pytestmark = pytest.mark.anyio


class Calling:
    """A layer written the plain way: ``__call__(job, call_next)``."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        self.log.append(f"{self.name} in")
        outcome = await call_next(job)
        self.log.append(f"{self.name} out")
        return outcome


class Wrapping(Calling):
    """The same layer, also offering ``wrap``: the worker must compose it once and call that."""

    wraps = 0

    def wrap(self, call_next: CallNext) -> CallNext:
        Wrapping.wraps += 1

        async def layer(job: Job) -> Outcome:
            self.log.append(f"{self.name} in (wrapped)")
            outcome = await call_next(job)
            self.log.append(f"{self.name} out (wrapped)")
            return outcome

        return layer


async def test_layers_with_and_without_wrap_run_in_order_around_each_job() -> None:
    log: list[str] = []
    Wrapping.wraps = 0
    app = memory_app()
    app.middleware.extend([Calling("a", log), Wrapping("b", log), Calling("c", log)])

    @app.task
    async def work() -> None:
        log.append("handler")

    for _ in range(3):
        await work.enqueue()
    async with running(app, concurrency=1) as worker:
        await eventually(lambda: worker.stats.done == 3)
    one_job = ["a in", "b in (wrapped)", "c in", "handler", "c out", "b out (wrapped)", "a out"]
    assert log == one_job * 3
    assert Wrapping.wraps == 1  # composed once, at the worker's start, not per job


async def test_built_in_layers_work_called_directly_as_plain_middleware() -> None:
    """``RetryMiddleware`` and ``TimeoutMiddleware`` still honour ``__call__`` (a hand-built chain)."""
    app = memory_app()
    seen: list[Outcome] = []

    class Classify:
        async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
            outcome = await RetryMiddleware()(job, lambda j: TimeoutMiddleware()(j, call_next))
            seen.append(outcome)
            return outcome

    app.middleware.append(Classify())

    @app.task(max_attempts=1)
    async def fails() -> None:
        raise ValueError("boom")

    await fails.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.dead == 1)
    assert [(o.kind, o.reason, type(o.error)) for o in seen] == [("dead", "max_attempts", ValueError)]


async def test_a_layer_may_run_the_rest_again_after_a_timeout() -> None:
    """Each pass through the timeout layer has its own scope: the first one's timeout does not stick."""
    calls: list[int] = []

    class AgainOnce:
        async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
            outcome = await call_next(job)
            if outcome.kind == "retry" and outcome.reason == "timeout":
                outcome = await call_next(job)
            return outcome

    app = memory_app()
    app.middleware.append(AgainOnce())

    @app.task(timeout=0.2)
    async def slow_then_fast() -> None:
        calls.append(1)
        if len(calls) == 1:
            await anyio.sleep(5)

    await slow_then_fast.enqueue()
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done + worker.stats.retried == 1)
    assert (worker.stats.done, worker.stats.retried, len(calls)) == (1, 0, 2)


async def test_middleware_sees_each_handlers_result_and_outcomes_cannot_be_changed_in_place() -> None:
    """Outcomes are values (one is shared by every handler that returns ``None``): changing one raises."""
    seen: list[Outcome] = []

    class Watching:
        async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
            outcome = await call_next(job)
            seen.append(outcome)
            return outcome

    app = memory_app()
    app.middleware.append(Watching())

    @app.task(name="returns")
    async def returns(n: int) -> int | None:
        return n if n else None

    for n in (0, 7, 0):
        await returns.enqueue(n)
    async with running(app) as worker:
        await eventually(lambda: worker.stats.done == 3)
    assert sorted((o.kind, repr(o.result)) for o in seen) == [("done", "7"), ("done", "None"), ("done", "None")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].reason = "changed"  # type: ignore[misc]
    assert dataclasses.replace(seen[0], reason="changed").reason == "changed"

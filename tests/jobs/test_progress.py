"""Progress reported by a handler: seen in the job's status, written with the heartbeat."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import asyncjobs
from asyncjobs import App
from tests.runtime.helpers import running

pytestmark = pytest.mark.anyio

FAST = {"heartbeat_seconds": 0.2, "lease_seconds": 5.0, "fetch_wait_seconds": 0.2}


@pytest.mark.parametrize("keep", [60.0, 0.0])
async def test_progress_shows_in_the_status_and_costs_no_store_call_per_report(app: App, keep: float) -> None:
    store = app.results
    assert store is not None
    writes: list[Any] = []
    write_many = store.write_many

    async def counted(batch: Any) -> None:
        writes.extend(batch)
        await write_many(batch)

    store.write_many = counted  # type: ignore[method-assign]
    reported, release = anyio.Event(), anyio.Event()

    @app.task(keep_result=keep)
    async def pages(n: int) -> int:
        for page in range(1, n + 1):
            await asyncjobs.progress(page / n, f"page {page} of {n}")
        reported.set()
        await release.wait()
        return n

    ref = await pages.enqueue(200)
    async with running(app, **FAST):
        with anyio.fail_after(10):
            await reported.wait()
            while (status := await ref.status()).progress != 1.0:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert status.state == "running" or keep == 0
        assert status.message == "page 200 of 200"
        release.set()
        with anyio.fail_after(10):
            while not (await ref.status()).finished:  # noqa: ASYNC110
                await anyio.sleep(0.05)
    if not store.local:  # one final write; the 200 reports went with the heartbeats
        assert len(writes) == 1
    final = await ref.status()
    assert final.state == "done"
    assert final.progress == 1.0


async def test_progress_outside_a_job_does_nothing() -> None:
    await asyncjobs.progress(0.5, "not in a job")

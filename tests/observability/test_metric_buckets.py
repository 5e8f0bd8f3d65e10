"""Histogram buckets that fit their unit: a p99 computed from a Prometheus scrape says something.

With the SDK's default buckets (meant for milliseconds: 0, 5, 10, 25... 10000) every job of a few
milliseconds lands in ``le="5.0"`` and a p99 over seconds reads about 4.95 s whatever the jobs did.
"""

from __future__ import annotations

import math
import time
import uuid

import anyio
import pytest

from asyncjobs import App
from asyncjobs.memory import MemoryBroker
from asyncjobs.metrics_server import serve_metrics
from asyncjobs.retrying import Backoff
from tests.observability.test_metrics import free_port, scrape
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def buckets(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    """``(le, cumulative count)`` of histogram ``name`` over the series matching ``labels``, summed per ``le``."""
    wanted = set(labels.items())
    summed: dict[float, float] = {}
    for (sample, sample_labels), count in samples.items():
        if sample == f"{name}_bucket" and wanted <= sample_labels:
            le = float(dict(sample_labels)["le"])
            summed[le] = summed.get(le, 0.0) + count
    return sorted(summed.items())


def delta(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The buckets of what happened between two scrapes."""
    earlier = dict(before)
    return [(le, count - earlier.get(le, 0.0)) for le, count in after]


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """What PromQL's ``histogram_quantile(q, ...)`` returns for these buckets (linear within a bucket)."""
    assert cumulative and math.isinf(cumulative[-1][0]), "a histogram ends with le=+Inf"
    total = cumulative[-1][1]
    assert total > 0
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower  # Prometheus returns the highest finite bound
            return lower + (le - lower) * (rank - below) / (count - below) if count > below else le
        lower, below = le, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")


def test_histogram_quantile_reads_buckets_as_prometheus_does() -> None:
    assert histogram_quantile(0.5, [(1.0, 50), (2.0, 100), (math.inf, 100)]) == 1.0
    assert histogram_quantile(0.99, [(5.0, 100), (10.0, 100), (math.inf, 100)]) == pytest.approx(4.95)
    assert histogram_quantile(0.99, [(1.0, 0), (math.inf, 10)]) == 1.0


async def test_p99_of_a_scrape_tells_quick_jobs_from_slow_ones_and_counts_attempts() -> None:
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))
    tag = uuid.uuid4().hex[:8]
    fast_name, mixed_name, flaky_name = f"fast_{tag}", f"mixed_{tag}", f"flaky_{tag}"
    tries: dict[int, int] = {}

    @app.task(name=fast_name)
    async def fast() -> None:
        await anyio.sleep(0.002)

    @app.task(name=mixed_name)
    async def mixed(slow: bool) -> None:
        await anyio.sleep(0.3 if slow else 0.002)

    @app.task(name=flaky_name, backoff=Backoff(base=0.01, cap=0.01))
    async def flaky(n: int) -> None:
        tries[n] = tries.get(n, 0) + 1
        if n % 2 and tries[n] == 1:
            raise ConnectionError("first try of an odd job fails")

    for _ in range(100):
        await fast.enqueue()
    for i in range(10):
        await mixed.enqueue(i >= 8)  # two slow jobs of ten: the p99 is a slow one
    for n in range(10):
        await flaky.enqueue(n)
    port = free_port()
    async with serve_metrics(port, app.broker, ["default"]), running(app, concurrency=10) as worker:
        await eventually(lambda: worker.stats.done == 120, within=30)
        samples: Samples = await anyio.to_thread.run_sync(scrape, port)

    duration = "asyncjobs_job_duration_seconds"
    fast_p99 = histogram_quantile(0.99, buckets(samples, duration, task=fast_name, outcome="done"))
    assert fast_p99 < 0.5, f"p99 of 2 ms jobs read as {fast_p99:.3f}s"  # room for a loaded machine
    mixed_p99 = histogram_quantile(0.99, buckets(samples, duration, task=mixed_name, outcome="done"))
    assert 0.25 <= mixed_p99 <= 1.0, f"p99 with two 0.3 s jobs in ten read as {mixed_p99:.3f}s"
    wait_p99 = histogram_quantile(0.99, buckets(samples, "asyncjobs_job_queue_wait_seconds", task=fast_name))
    assert wait_p99 < 5.0 * 0.99  # the default buckets would read it as 4.95 s
    attempts = dict(buckets(samples, "asyncjobs_job_attempts", task=flaky_name, outcome="done"))
    assert (attempts[1.0], attempts[2.0], attempts[math.inf]) == (5, 10, 10)  # even jobs on the 1st, odd on the 2nd
    assert 1.0 < histogram_quantile(0.99, sorted(attempts.items())) <= 2.0


async def test_p99_of_loop_stalls_from_a_scrape() -> None:
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))

    @app.task(name=f"blocker_{uuid.uuid4().hex[:8]}")
    async def blocker() -> None:
        time.sleep(0.15)  # noqa: ASYNC251 - blocks the loop on purpose

    stall = "asyncjobs_loop_stall_duration_seconds"
    port = free_port()
    async with serve_metrics(port, app.broker, ["default"]):
        before = buckets(await anyio.to_thread.run_sync(scrape, port), stall)
        async with running(app, stall_seconds=0.05, concurrency=1) as worker:
            for n in range(1, 4):  # one at a time: each stall is seen on its own
                await blocker.enqueue()
                await eventually(lambda n=n: worker.stats.done == n, within=30)
                await anyio.sleep(0.2)  # the detector reports a stall once the loop runs again
        after = buckets(await anyio.to_thread.run_sync(scrape, port), stall)
    happened = delta(after, before)
    assert happened[-1][1] >= 3
    p99 = histogram_quantile(0.99, happened)
    assert 0.1 <= p99 <= 1.0, f"p99 of 0.15 s stalls read as {p99:.3f}s"

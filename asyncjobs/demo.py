"""The example app behind ``asyncjobs demo``: every kind of job, run on the embedded broker.

Fast jobs; slow jobs that outlive their lease three times over (kept alive by heartbeats);
jobs that time out on every attempt; jobs that fail twice with a connection error and then
succeed; jobs that fail permanently; and a malformed message. It prints what happened to each
kind and exits 0 only when every job ended as it should, with no duplicate run.
"""

from __future__ import annotations

import uuid
from collections import Counter

import anyio
from rich.console import Console
from rich.table import Table

from asyncjobs.app import App
from asyncjobs.broker import OutgoingJob
from asyncjobs.clock import monotonic
from asyncjobs.config import WorkerConfig
from asyncjobs.errors import PermanentError
from asyncjobs.retrying import Backoff
from asyncjobs.worker import Worker

LEASE = 1.0
QUICK = Backoff(base=0.05, cap=0.2)

app = App(f"memory://demo-{uuid.uuid4().hex[:8]}")
runs: Counter[tuple[str, int]] = Counter()
finished: Counter[tuple[str, int]] = Counter()


@app.task(name="fast")
async def fast(n: int) -> None:
    """Returns at once."""
    runs["fast", n] += 1
    finished["fast", n] += 1


@app.task(name="slow", timeout=10)
async def slow(n: int) -> None:
    """Runs for three lease lengths; heartbeats keep its lease."""
    runs["slow", n] += 1
    await anyio.sleep(LEASE * 3)
    finished["slow", n] += 1


@app.task(name="stuck", timeout=0.2, max_attempts=2, backoff=QUICK)
async def stuck(n: int) -> None:
    """Never finishes in time: times out twice, then is dead-lettered."""
    runs["stuck", n] += 1
    await anyio.sleep(60)


@app.task(name="flaky", max_attempts=4, backoff=QUICK)
async def flaky(n: int) -> None:
    """Fails twice with a connection error, then succeeds."""
    runs["flaky", n] += 1
    if runs["flaky", n] <= 2:
        raise ConnectionError("upstream not reachable (simulated)")
    finished["flaky", n] += 1


@app.task(name="broken")
async def broken(n: int) -> None:
    """Fails permanently: dead-lettered at once."""
    runs["broken", n] += 1
    raise PermanentError(f"order {n} does not exist (simulated)")


EXPECTED = {"fast": "done", "slow": "done", "flaky": "done", "stuck": "dead", "broken": "dead", "malformed": "dead"}


async def run_demo(jobs: int, console: Console) -> bool:
    """Enqueue ``jobs`` of each kind, run a worker until all are settled, print a table."""
    kinds = [fast, slow, stuck, flaky, broken]
    for task in kinds:
        await app.enqueue_many(task, [task.call(n) for n in range(jobs)])
    await app.broker.enqueue([OutgoingJob(uuid.uuid4().hex, "default", b"\x00 not an envelope")])
    total = jobs * len(kinds) + 1
    worker = Worker(app, WorkerConfig(concurrency=max(jobs * 2, 10), lease_seconds=LEASE, drain_seconds=2))
    started = monotonic()
    with console.status("running the demo jobs..."):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.move_on_after(60):
                while worker.stats.done + worker.stats.dead < total:  # noqa: ASYNC110 - polls counters
                    await anyio.sleep(0.05)
            worker.stop()
    elapsed = monotonic() - started
    dead = await app.broker.list_dead("default", limit=total)
    dead_by_kind = Counter(d.info.task or "malformed" for d in dead)
    table = Table(title=f"asyncjobs demo: {total} jobs on the embedded broker in {elapsed:.1f}s")
    for column in ("kind", "jobs", "runs", "done", "dead-lettered", "expected", "duplicates"):
        table.add_column(column, justify="right" if column not in ("kind", "expected") else "left")
    ok = True
    for kind, expected in EXPECTED.items():
        count = 1 if kind == "malformed" else jobs
        done = sum(1 for (k, _), c in finished.items() if k == kind and c >= 1)
        duplicates = sum(c - 1 for (k, _), c in finished.items() if k == kind and c > 1)
        kind_runs = sum(c for (k, _), c in runs.items() if k == kind)
        good = (done if expected == "done" else dead_by_kind[kind]) == count and duplicates == 0
        ok &= good
        table.add_row(kind, str(count), str(kind_runs), str(done), str(dead_by_kind[kind]), expected, str(duplicates))
    console.print(table)
    s = worker.stats
    summary = Table(title="worker totals")
    for column in ("done", "retried", "timed out", "dead-lettered", "lease lost", "duplicates"):
        summary.add_column(column, justify="right")
    duplicates = sum(c - 1 for c in finished.values() if c > 1)
    summary.add_row(str(s.done), str(s.retried), str(s.timed_out), str(s.dead), str(s.lease_lost), str(duplicates))
    console.print(summary)
    console.print(
        "[green]every job ended as expected[/green]" if ok else "[red]some jobs did not end as expected[/red]"
    )
    return ok

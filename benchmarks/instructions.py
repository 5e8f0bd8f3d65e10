"""``python -m benchmarks.instructions``: CPU instructions per drained job, counted by valgrind.

Wall-clock throughput on a shared machine moves by +-20% from one run to the next, more than most
changes to the hot path are worth. An instruction count does not move: valgrind's ``callgrind``
tool counts every instruction the process executes, the same on every run. This tool counts the
memory scenarios' drain that way, as instructions per job, and the ratio of each to the bare
asyncio loop (the ceiling), so a change to the worker can be judged to the percent.

Each scenario runs in a child process four times: ``N`` and ``2N`` jobs, each enqueued one call
at a time, with and without the drain. The instructions of one drained job are
``((full 2N - enqueue-only 2N) - (full N - enqueue-only N)) / N``, so start-up, enqueue and the
worker's own start and stop all cancel out; those of one enqueue call are
``(enqueue-only 2N - enqueue-only N) / N``. Instructions are not time (a cache miss costs more
than an add), so this complements the wall-clock figures; it does not replace them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.core import Recorder, Workload, new_prefix
from benchmarks.suite_memory import SYSTEMS as MEMORY_SYSTEMS
from benchmarks.suite_tracing import SYSTEMS as TRACING_SYSTEMS

# taskiq's InMemoryBroker starts each job on enqueue, so its drain cannot be counted apart.
DEFAULT = [s for s in MEMORY_SYSTEMS if s.key != "taskiq-memory"]
SYSTEMS = DEFAULT + TRACING_SYSTEMS  # the tracing scenarios (all on memory://) when asked for with --only

_COLLECTED = re.compile(rb"Collected : (\d+)")


async def _child(key: str, jobs: int, drain: bool) -> None:
    """Enqueue ``jobs`` no-op jobs for scenario ``key`` and, with ``drain``, run its worker until all started."""
    system_type = next(s for s in SYSTEMS if s.key == key)
    recorder = Recorder(jobs)
    system = system_type(Workload(jobs=jobs), recorder, new_prefix(key))
    reason = await system.check()
    if reason is not None:
        raise SystemExit(f"{key}: {reason}")
    await system.setup()
    try:
        await system.enqueue_series(range(jobs))  # one call per job, as the wall-clock "enqueue 1x1"
        if drain:
            async with system.worker():
                await recorder.wait()
    finally:
        await system.cleanup()


def _count(key: str, jobs: int, drain: bool) -> int:
    """Instructions of one child run under callgrind."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "benchmarks.instructions", "--child", key, "--jobs", str(jobs)]
    if not drain:
        command.append("--enqueue-only")
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same hashing on every run: fewer stray differences
    done = subprocess.run(command, capture_output=True, check=False, timeout=900, env=env)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{key}: valgrind run failed: {' | '.join(tail)}")
    return int(found.group(1))


@dataclass(frozen=True)
class Count:
    """Instructions per drained job of one scenario."""

    key: str
    label: str
    per_job: float
    enqueue: float  # instructions of one enqueue call


def _measure(keys: list[str], jobs: int, console: Console) -> list[Count]:
    runs = [(key, n, drain) for key in keys for n in (jobs, 2 * jobs) for drain in (True, False)]
    totals: dict[tuple[str, int, bool], int] = {}
    with (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress,
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
    ):
        task = progress.add_task("valgrind runs", total=len(runs))
        futures = {run: pool.submit(_count, *run) for run in runs}
        for run, future in futures.items():
            totals[run] = future.result()
            progress.advance(task)
    labels = {s.key: s.label for s in SYSTEMS}
    counts = []
    for key in keys:
        big = totals[key, 2 * jobs, True] - totals[key, 2 * jobs, False]
        small = totals[key, jobs, True] - totals[key, jobs, False]
        enqueue = (totals[key, 2 * jobs, False] - totals[key, jobs, False]) / jobs
        counts.append(Count(key, labels[key], (big - small) / jobs, enqueue))
    return counts


@click.command()
@click.option(
    "--jobs", default=3000, show_default=True, help="Jobs of the smaller run (the larger runs twice as many)."
)
@click.option(
    "--only", default="", help="Comma-separated scenario keys (default: the memory scenarios; tracing-* also work)."
)
@click.option("--child", default="", hidden=True)
@click.option("--enqueue-only", is_flag=True, hidden=True)
def main(jobs: int, only: str, child: str, enqueue_only: bool) -> None:
    """Count CPU instructions per drained job of the memory scenarios (needs valgrind)."""
    if child:
        asyncio.run(_child(child, jobs, not enqueue_only))
        return
    if shutil.which("valgrind") is None:
        raise click.ClickException("valgrind is not installed (Debian: apt-get install valgrind)")
    keys = [k for k in only.split(",") if k] or [s.key for s in DEFAULT]
    unknown = set(keys) - {s.key for s in SYSTEMS}
    if unknown:
        raise click.ClickException(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    console = Console()
    counts = _measure(keys, jobs, console)
    ceiling = next((c.per_job for c in counts if c.key == SYSTEMS[0].key), None)
    table = Table(
        title=f"memory: CPU instructions per drained job (valgrind callgrind, {jobs:,} and {2 * jobs:,} jobs)"
    )
    table.add_column("scenario")
    table.add_column("drain: instructions / job", justify="right")
    table.add_column("vs ceiling (fewer is faster)", justify="right")
    table.add_column("enqueue 1x1: instructions / call", justify="right")
    for count in counts:
        ratio = f"{ceiling / count.per_job:.2f}x" if ceiling else "-"
        table.add_row(count.label, f"{count.per_job:,.0f}", ratio, f"{count.enqueue:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()

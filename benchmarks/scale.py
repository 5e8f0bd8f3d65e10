"""``python -m benchmarks.scale``: Redis Cluster against one Redis, and several worker processes against one.

Two tables, one run:

1. **cluster**: bulk enqueue and drain (one worker, concurrency ``C``) on the shared Redis (no
   persistence), on a private Redis with ``appendfsync always`` and on a private Redis Cluster
   (3 masters + 3 replicas, ``appendfsync always`` on every node, as ``tests/servers`` starts it);
   then 3 queues on 3 masters, served by one consumer or by one worker process per queue.
2. **processes**: ``N`` jobs queued on ``redis://`` and ``amqp://``, drained by 1, 2, 3, 4 worker
   processes (``asyncjobs worker benchmarks.scale_app:app``), each released at the same moment
   after its start-up; the CPU seconds of the workers, of the server and of the whole machine over
   the drain say where the limit is.

*drain* = ``(N - 1) / (start of the last handler - start of the first)``, as in ``python -m benchmarks``.
Each scenario has its own prefix, deletes its keys or queues afterwards, stops every process it
started by PID and is bounded by ``--timeout``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import anyio
import click
from rich.console import Console

from asyncjobs import App, Worker, WorkerConfig
from benchmarks.core import Recorder, in_background, new_prefix, rate
from benchmarks.scale_procs import CpuWindow, StartListener, worker_processes
from benchmarks.scale_servers import Server, delete_keys, queue_names, start_servers

SINGLE_CALLS = 500  # jobs enqueued one call at a time before the bulk part


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    table: str  # "cluster" or "processes"
    server: str
    label: str
    queues: int = 1
    processes: int = 0  # 0: the worker runs in this process


@dataclass(slots=True)
class Row:
    """The figures of one scenario (CPU in seconds over the drain window of ``wall`` seconds)."""

    key: str
    table: str
    label: str
    server: str
    persistence: str
    queues: int
    processes: int
    jobs: int
    status: str = "ok"
    enqueue_one: float | None = None
    enqueue_bulk: float | None = None
    drain: float | None = None
    wall: float | None = None
    client_cpu: float | None = None  # the worker processes, or this process when the worker runs here
    here_cpu: float | None = None  # this process (the UDP listener) while worker processes drain
    server_cpu: float | None = None  # every server process
    server_busiest: float | None = None  # the busiest server process
    machine_cpu: float | None = None  # every core of the machine, other work included
    one_thread: bool = True  # the server does its work on one thread (Redis)
    limit: str = ""
    duplicates: int = 0
    seconds: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)


FIGURES = (
    "enqueue_one", "enqueue_bulk", "drain", "wall", "client_cpu", "here_cpu", "server_cpu", "server_busiest", "machine_cpu",
)  # fmt: skip


def scenarios(processes: list[int]) -> list[Scenario]:
    """Every scenario in the order they run and are shown."""
    one = "1 queue, 1 worker in this process"

    def procs(p: int) -> str:
        return f"{p} worker process" + ("es" if p > 1 else "")

    return [
        Scenario("redis-shared", "cluster", "redis", f"shared redis, {one}"),
        Scenario("redis-aof", "cluster", "redis-aof", f"private redis, {one}"),
        Scenario("cluster", "cluster", "cluster", f"cluster, {one}"),
        Scenario("cluster-3q", "cluster", "cluster", "cluster, 3 queues (3 masters), 1 worker over all 3", queues=3),
        Scenario("redis-aof-3q-3p", "cluster", "redis-aof", "private redis, 3 queues, 3 worker processes", 3, 3),
        Scenario("cluster-3q-3p", "cluster", "cluster", "cluster, 3 queues (3 masters), 1 process per queue", 3, 3),
        *(Scenario(f"redis-{p}p", "processes", "redis", f"redis://, {procs(p)}", 1, p) for p in processes),
        *(Scenario(f"amqp-{p}p", "processes", "amqp", f"amqp://, {procs(p)}", 1, p) for p in processes),
    ]


# --- one scenario ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    jobs: int
    concurrency: int
    batch: int
    timeout: float


async def run_scenario(sc: Scenario, server: Server, opt: Options, rec: Recorder) -> Row:
    """Enqueue ``jobs`` jobs, then drain them; never raises (a failure becomes the status)."""
    row = Row(sc.key, sc.table, sc.label, server.label, server.persistence, sc.queues, sc.processes, opt.jobs)
    row.one_thread = server.single_threaded
    prefix = new_prefix(f"scale-{sc.key}")
    began = time.monotonic()
    app: App | None = None
    try:
        with anyio.fail_after(opt.timeout):
            queues = await anyio.to_thread.run_sync(queue_names, server, prefix, sc.queues)
            app = App(server.url(prefix), default_queue=queues[0])

            @app.task(name="bench.noop")
            async def noop(index: int) -> None:
                rec.mark(index)

            await app.broker.connect()
            handles = [noop.options(queue=q) for q in queues]
            t0 = time.monotonic()
            single = min(SINGLE_CALLS, opt.jobs // 10)
            for i in range(single):
                await handles[i % len(handles)].enqueue(i)
            row.enqueue_one = rate(single, time.monotonic() - t0)
            t0 = time.monotonic()
            for n, start in enumerate(range(single, opt.jobs, opt.batch)):
                handle = handles[n % len(handles)]
                await app.enqueue_many(handle, [handle.call(i) for i in range(start, min(start + opt.batch, opt.jobs))])
            row.enqueue_bulk = rate(opt.jobs - single, time.monotonic() - t0)
            rec.expect(opt.jobs)
            if sc.processes:
                cpu = await drain_in_processes(server, prefix, queues, sc.processes, opt, rec)
                row.client_cpu, row.here_cpu = cpu.total("workers"), cpu.total("here")
            else:
                cpu = await drain_here(app, server, queues, opt, rec)
                row.client_cpu = cpu.total("here")
            starts = rec.starts[: opt.jobs]
            row.drain = rate(opt.jobs - 1, max(starts) - min(starts))
            row.wall, row.machine_cpu = cpu.wall, cpu.machine
            row.server_cpu, row.server_busiest = cpu.total("server"), cpu.busiest("server")
            row.limit = limit(row)
    except TimeoutError:
        row.status = f"timeout after {opt.timeout:.0f}s ({rec.count} jobs had started)"
    except Exception as exc:
        row.status = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        traceback.print_exc()
    finally:
        with anyio.move_on_after(30, shield=True):
            try:
                if app is not None:
                    await app.broker.close()
                await delete_keys(server, prefix)
            except Exception as exc:
                row.status += f" (cleanup failed: {exc})"
        row.seconds, row.duplicates = time.monotonic() - began, rec.duplicates
    return row


async def drain_here(app: App, server: Server, queues: list[str], opt: Options, rec: Recorder) -> CpuWindow:
    """One worker in this process drains the queues; the CPU window runs from its start to the last start."""
    config = WorkerConfig(queues=tuple(queues), concurrency=opt.concurrency, shutdown_signals=False)
    worker = Worker(app, config)
    cpu = CpuWindow({"here": [os.getpid()], "server": server.pids})
    cpu.start()
    async with in_background(worker.run, worker.stop, grace=10.0):
        await rec.wait()
        cpu.stop()
    return cpu


async def drain_in_processes(
    server: Server, prefix: str, queues: list[str], count: int, opt: Options, rec: Recorder
) -> CpuWindow:
    """``count`` worker processes (queue ``k % len(queues)`` for the k-th), released together."""
    async with (
        StartListener(rec).open() as listener,
        worker_processes(
            server.url(prefix), [[queues[k % len(queues)]] for k in range(count)], listener, opt.concurrency
        ) as gate,
    ):
        await gate.ready()
        cpu = CpuWindow({"workers": gate.pids, "here": [os.getpid()], "server": server.pids})
        cpu.start()
        gate.go()
        await rec.wait()
        cpu.stop()
    return cpu


def other_cpu(row: Row) -> float | None:
    """CPU seconds the machine spent on work that is not this scenario's (other processes)."""
    if row.machine_cpu is None or row.client_cpu is None:
        return None
    ours = row.client_cpu + (row.server_cpu or 0.0) + ((row.here_cpu or 0.0) if row.processes else 0.0)
    return max(row.machine_cpu - ours, 0.0)


def limit(row: Row) -> str:
    """Where the limit of a drain is, from the CPU the processes used over its window."""
    if not row.wall or row.client_cpu is None:
        return ""
    cores = os.cpu_count() or 1
    client = row.client_cpu / row.wall
    busiest = (row.server_busiest or 0.0) / row.wall
    machine = (row.machine_cpu or 0.0) / row.wall
    other = (other_cpu(row) or 0.0) / row.wall
    per_process = client / max(row.processes, 1)
    if row.one_thread and busiest >= 0.8:
        return f"server: its one thread {busiest:.2f} core"
    if machine >= 0.85 * cores:
        shared = f", {other:.1f} of them other work" if other >= 0.3 else ""
        return f"machine CPU: {machine:.1f} of {cores} cores busy{shared}"
    if per_process >= 0.7:
        return f"client CPU: {per_process:.2f} core per process"
    wait = "round trips and fsync" if "aof" in row.persistence else "round trips"
    return f"no CPU saturated: waiting on {wait}"


# --- the run ----------------------------------------------------------------------------------------


def summarize(runs: list[Row]) -> Row:
    """One row from repeated runs: the median of each figure (of the runs that went well)."""
    ok = [r for r in runs if r.status == "ok"] or runs
    failed = [r for r in runs if r.status != "ok"]
    out = replace(runs[0], status=failed[0].status if failed else "ok", runs=[asdict(r) for r in runs])
    for name in FIGURES:
        values = [getattr(r, name) for r in ok if getattr(r, name) is not None]
        setattr(out, name, statistics.median(values) if values else None)
    out.limit = limit(out) if out.status == "ok" else ""
    out.duplicates = max(r.duplicates for r in runs)
    out.seconds = sum(r.seconds for r in runs)
    return out


async def run_all(
    plan: list[Scenario], servers: dict[str, Server | str], opt: Options, repeat: int, console: Console, show: bool
) -> list[Row]:
    """Every planned scenario ``repeat`` times, interleaved (all once, then all again)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    runs: dict[str, list[Row]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not show, transient=True) as progress:
        overall = progress.add_task("scenarios", total=len(plan) * repeat)
        for attempt in range(repeat):
            for sc in plan:
                server = servers[sc.server]
                if isinstance(server, str):
                    row = Row(sc.key, sc.table, sc.label, sc.server, "", sc.queues, sc.processes, opt.jobs)
                    row.status = f"not available: {server}"
                    runs.setdefault(sc.key, []).append(row)
                    progress.advance(overall)
                    continue
                name = sc.label + (f" (run {attempt + 1}/{repeat})" if repeat > 1 else "")
                current = progress.add_task(name, total=opt.jobs)
                rec = Recorder(opt.jobs)
                async with anyio.create_task_group() as tg:

                    async def tick(rec: Recorder = rec, current: Any = current) -> None:
                        while True:
                            progress.update(current, completed=rec.count)
                            await anyio.sleep(0.1)

                    tg.start_soon(tick)
                    row = await run_scenario(sc, server, opt, rec)
                    tg.cancel_scope.cancel()
                runs.setdefault(sc.key, []).append(row)
                progress.remove_task(current)
                progress.advance(overall)
                if not show:
                    console.print(f"{name}: {row.status}, drain {row.drain or 0:,.0f} jobs/s")
    return [summarize(runs[sc.key]) for sc in plan]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--jobs", type=click.IntRange(min=10), default=20_000, show_default=True, help="No-op jobs per scenario.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=10, show_default=True, help="Jobs run at once, per worker."
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=1_000, show_default=True, help="Jobs per bulk enqueue call."
)
@click.option(
    "--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Runs per scenario (median shown)."
)
@click.option("--processes", default="1,2,3,4", show_default=True, help="Worker process counts of the processes table.")
@click.option("--only", multiple=True, help="Scenario keys (repeatable or comma-separated; see --list).")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True, help="Seconds one scenario may take."
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a live progress display.")
@click.option(
    "--json/--no-json", "write", default=True, show_default=True, help="Write results to benchmarks/results/."
)
@click.option("--list", "list_only", is_flag=True, help="List the scenario keys and exit.")
def main(
    jobs: int,
    concurrency: int,
    batch: int,
    repeat: int,
    processes: str,
    only: tuple[str, ...],
    timeout: float,
    progress: bool,
    write: bool,
    list_only: bool,
) -> None:
    """Redis Cluster against one Redis, and 1..4 worker processes against one: throughput and where the limit is."""
    from benchmarks.scale_report import print_tables, write_json

    console = Console(width=None if sys.stdout.isatty() else 200)
    try:
        counts = sorted({int(p) for p in processes.split(",") if p.strip()})
    except ValueError:
        raise click.BadParameter(f"{processes!r}: use counts like 1,2,3,4", param_hint="--processes") from None
    every = scenarios(counts)
    if list_only:
        for sc in every:
            console.print(f"{sc.table:10} {sc.key:18} {sc.label}")
        return
    keys = {k.strip() for item in only for k in item.split(",") if k.strip()}
    unknown = keys - {sc.key for sc in every}
    if unknown:
        raise click.BadParameter(f"unknown scenario {', '.join(sorted(unknown))}; see --list", param_hint="--only")
    plan = [sc for sc in every if not keys or sc.key in keys]
    opt = Options(jobs, concurrency, batch, timeout)
    with contextlib.ExitStack() as stack:
        servers = start_servers(stack, {sc.server for sc in plan})
        rows = anyio.run(run_all, plan, servers, opt, repeat, console, progress)
    print_tables(console, rows, opt)
    if write:
        console.print(f"results written to {write_json(rows, opt, repeat, sys.argv[1:])}")


if __name__ == "__main__":
    main()

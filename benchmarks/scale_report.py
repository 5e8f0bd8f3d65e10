"""The tables and the JSON record of ``python -m benchmarks.scale``."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.report import RESULTS_DIR, _finite, _fmt_rate, _ratio, _versions
from benchmarks.scale import Options, Row, other_cpu


def cores(seconds: float | None, row: Row) -> str:
    """CPU seconds over the drain window as cores busy (1.00 = one core all the time)."""
    if seconds is None or not row.wall:
        return "-"
    return f"{seconds / row.wall:.2f}"


def per_job(seconds: float | None, row: Row) -> str:
    """CPU seconds over the drain as microseconds per drained job."""
    if seconds is None or not row.jobs:
        return "-"
    return f"{seconds / row.jobs * 1e6:,.0f}"


def status(row: Row) -> str:
    return row.status if row.duplicates == 0 else f"{row.status}, {row.duplicates} duplicates"


def cluster_table(rows: Sequence[Row], opt: Options) -> Table:
    """Redis Cluster against one Redis: enqueue and drain, and the CPU behind them."""
    ref = next((r for r in rows if r.key == "redis-shared" and r.status == "ok"), None)
    table = Table(
        title=f"Redis Cluster against one Redis: {opt.jobs:,} no-op jobs, concurrency {opt.concurrency} per worker",
        caption="CPU columns: cores busy over the drain (CPU seconds / drain seconds), and CPU microseconds per "
        "drained job; client = this process "
        "(enqueue and worker) or the worker processes; server = all its processes (busiest one); machine = every "
        "core, other work = machine less this scenario's processes",
    )
    for name in ("scenario", "persistence"):
        table.add_column(name)
    for name in ("enqueue 1x1\njobs/s", "enqueue bulk\njobs/s", "drain\njobs/s", "drain vs\nshared redis"):
        table.add_column(name, justify="right")
    for name in ("client\ncores", "client\nus/job", "server cores\n(busiest)", "server\nus/job"):
        table.add_column(name, justify="right")
    for name in ("machine\ncores", "other\nwork"):
        table.add_column(name, justify="right")
    table.add_column("limit")
    table.add_column("status")
    for row in rows:
        table.add_row(
            row.label,
            row.persistence,
            _fmt_rate(row.enqueue_one),
            _fmt_rate(row.enqueue_bulk),
            _fmt_rate(row.drain),
            _ratio(row.drain, ref.drain if ref else None),
            cores(row.client_cpu, row),
            per_job(row.client_cpu, row),
            f"{cores(row.server_cpu, row)} ({cores(row.server_busiest, row)})",
            per_job(row.server_cpu, row),
            cores(row.machine_cpu, row),
            cores(other_cpu(row), row),
            row.limit,
            status(row),
            style=None if row.status == "ok" else "dim",
        )
    return table


def processes_table(rows: Sequence[Row], opt: Options) -> Table:
    """1..P worker processes on one queue: aggregate drain, and whose CPU was busy."""
    table = Table(
        title=f"Worker processes: {opt.jobs:,} queued no-op jobs, 1 queue, concurrency {opt.concurrency} per process, "
        f"{os.cpu_count()} cores",
        caption="cores busy over the drain; workers: all worker processes together (per process); "
        "us/job: CPU microseconds per drained job; machine: every core; other work: machine less this "
        "scenario's processes (this process, receiving the job starts, is in the JSON as here_cpu)",
    )
    table.add_column("scenario")
    for name in ("enqueue bulk\njobs/s", "drain\njobs/s", "vs 1\nprocess", "workers cores\n(per process)"):
        table.add_column(name, justify="right")
    for name in ("workers\nus/job", "server\ncores", "server\nus/job", "machine\ncores", "other\nwork"):
        table.add_column(name, justify="right")
    table.add_column("limit")
    table.add_column("status")
    for row in rows:
        one = next((r for r in rows if r.server == row.server and r.processes == 1 and r.status == "ok"), None)
        per = row.client_cpu / row.processes if row.client_cpu is not None and row.processes else None
        table.add_row(
            row.label,
            _fmt_rate(row.enqueue_bulk),
            _fmt_rate(row.drain),
            _ratio(row.drain, one.drain if one else None),
            f"{cores(row.client_cpu, row)} ({cores(per, row)})",
            per_job(row.client_cpu, row),
            cores(row.server_cpu, row),
            per_job(row.server_cpu, row),
            cores(row.machine_cpu, row),
            cores(other_cpu(row), row),
            row.limit,
            status(row),
            style=None if row.status == "ok" else "dim",
        )
    return table


def print_tables(console: Console, rows: Sequence[Row], opt: Options) -> None:
    """Each table that has rows."""
    cluster = [r for r in rows if r.table == "cluster"]
    procs = [r for r in rows if r.table == "processes"]
    if cluster:
        console.print(cluster_table(cluster, opt))
    if procs:
        console.print(processes_table(procs, opt))


def write_json(rows: Sequence[Row], opt: Options, repeat: int, argv: Sequence[str]) -> Path:
    """Write the run to ``benchmarks/results/scale-<UTC time>.json``; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"scale-{stamp}.json"
    doc = {
        "command": "python -m benchmarks.scale " + " ".join(argv),
        "when": stamp,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "packages": _versions(),
        "options": {**asdict(opt), "repeat": repeat},
        "results": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(_finite(doc), indent=2))
    return path

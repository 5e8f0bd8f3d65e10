"""Tables and progress for ``asyncjobs size`` (the numbers come from :mod:`asyncjobs.sizing`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asyncjobs import sizing
from asyncjobs.task import TaskSpec


async def measure_with_progress(
    console: Console,
    spec: TaskSpec,
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    runs: int,
    concurrency: int,
    limit: float,
) -> sizing.Measured:
    """Run the samples with a progress bar."""
    total = len(calls) * runs
    with Progress(
        TextColumn("running {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task(spec.name, total=total)
        return await sizing.measure(
            spec, calls, runs=runs, concurrency=concurrency, limit=limit, on_done=lambda: progress.advance(bar)
        )


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def report(console: Console, task: str, measured: sizing.Measured, settings: sizing.Settings) -> bool:
    """Print the distribution, the recommendation and the findings; False when a finding is an error."""
    dist = sizing.Distribution.of(measured.durations)
    table = Table(title=f"durations of {task!r} ({dist.count} runs)")
    for column in ("mean", "p50", "p95", "p99", "max", "worst loop stall", "failed runs"):
        table.add_column(column, justify="right")
    failed = ", ".join(f"{name} x{count}" for name, count in sorted(measured.errors.items())) or "0"
    table.add_row(_s(dist.mean), _s(dist.p50), _s(dist.p95), _s(dist.p99), _s(dist.max), _s(measured.max_stall), failed)
    console.print(table)

    rec = sizing.recommend(dist, max_stall=measured.max_stall)
    table = Table(title="settings")
    for column in ("setting", "now", "recommended", "why"):
        table.add_column(column)
    beat_now = "off" if settings.beat == 0 else _s(settings.beat)
    table.add_row("timeout (task)", _s(settings.timeout), _s(rec.timeout), rec.reasons["timeout"])
    table.add_row("lease (--lease)", _s(settings.lease), _s(rec.lease), rec.reasons["lease"])
    table.add_row("heartbeat (--heartbeat)", beat_now, _s(rec.heartbeat), rec.reasons["heartbeat"])
    console.print(table)

    findings = sizing.check(dist, settings, max_stall=measured.max_stall)
    if not findings:
        console.print("[green]no problems found with the current settings[/green]")
        return True
    table = Table(title="findings")
    table.add_column("severity")
    table.add_column("finding")
    for finding in findings:
        colour = "red" if finding.severity == "error" else "yellow"
        table.add_row(f"[{colour}]{finding.severity}[/{colour}]", finding.message)
    console.print(table)
    return not any(f.severity == "error" for f in findings)

"""``python -m benchmarks``: run the suite and print one table per broker."""

from __future__ import annotations

import gc
import logging
import sys
import warnings

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.core import Recorder, Result, System, Workload, measure, new_prefix, summarize
from benchmarks.report import print_report, write_json

BROKERS = ("memory", "redis", "rabbitmq", "tracing")


def quiet_peers() -> None:
    """Keep the peers' shutdown chatter (warnings about tasks cancelled at shutdown) out of the tables."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("ignore", ResourceWarning)


def suites() -> dict[str, list[type[System]]]:
    """Every scenario, by broker, in the order they run and are shown."""
    from benchmarks import suite_memory, suite_rabbitmq, suite_redis, suite_tracing

    return {
        "memory": suite_memory.SYSTEMS,
        "redis": suite_redis.SYSTEMS,
        "rabbitmq": suite_rabbitmq.SYSTEMS,
        "tracing": suite_tracing.SYSTEMS,
    }


async def run_all(
    plan: dict[str, list[type[System]]], workload: Workload, repeat: int, console: Console, show_progress: bool
) -> dict[str, list[Result]]:
    """Run every planned scenario ``repeat`` times.

    Repeats are interleaved (each broker's scenarios in turn, then again), so a slow patch of the
    machine spreads over all rows instead of biasing one.
    """
    runs: dict[tuple[str, str], list[Result]] = {}
    skip: set[str] = set()
    total = sum(len(v) for v in plan.values()) * repeat
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    ) as progress:
        overall = progress.add_task("scenarios", total=total)
        for broker, systems in plan.items():
            for attempt in range(repeat):
                for cls in systems:
                    if cls.key in skip:
                        progress.advance(overall)
                        continue
                    name = f"{broker} / {cls.label}" + (f" (run {attempt + 1}/{repeat})" if repeat > 1 else "")
                    current = progress.add_task(name, total=workload.jobs)

                    def report(phase: str, done: int, of: int, current: object = current, name: str = name) -> None:
                        progress.update(current, description=f"{name}: {phase}", completed=done, total=of)  # type: ignore[arg-type]

                    recorder = Recorder(workload.jobs + workload.paced)
                    system = cls(workload, recorder, new_prefix(cls.key))
                    result = await measure(system, broker, report)
                    runs.setdefault((broker, cls.key), []).append(result)
                    progress.remove_task(current)
                    progress.advance(overall)
                    if not show_progress:
                        console.print(f"{name}: {result.status}, drain {result.drain or 0:,.0f} jobs/s")
                    del system, recorder
                    gc.collect()
                    if result.status.startswith("not available"):
                        skip.add(cls.key)
    return {
        broker: [summarize(runs[(broker, cls.key)]) for cls in systems if (broker, cls.key) in runs]
        for broker, systems in plan.items()
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--broker",
    "brokers",
    type=click.Choice([*BROKERS, "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="Which brokers' scenarios to run (repeatable).",
)
@click.option("--jobs", type=click.IntRange(min=10), default=10_000, show_default=True, help="No-op jobs per scenario.")
@click.option("--concurrency", type=click.IntRange(min=1), default=10, show_default=True, help="Jobs run at once.")
@click.option(
    "--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Runs per scenario (median shown)."
)
@click.option("--only", multiple=True, help="Run only these scenario keys (repeatable or comma-separated; see --list).")
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=500.0,
    show_default=True,
    help="Paced enqueue rate (jobs/s) of the latency phase.",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=1_000, show_default=True, help="Jobs per bulk enqueue call."
)
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=180.0, show_default=True, help="Seconds one scenario may take."
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a live progress display.")
@click.option(
    "--json/--no-json", "write", default=True, show_default=True, help="Write results to benchmarks/results/."
)
@click.option("--plot", is_flag=True, help="Also save a PNG chart beside the JSON (needs matplotlib).")
@click.option("--list", "list_only", is_flag=True, help="List the scenario keys and exit.")
def main(
    brokers: tuple[str, ...],
    jobs: int,
    concurrency: int,
    repeat: int,
    only: tuple[str, ...],
    rate: float,
    batch: int,
    timeout: float,
    progress: bool,
    write: bool,
    plot: bool,
    list_only: bool,
) -> None:
    """Throughput and enqueue->start latency of asyncjobs beside raw loops and peer job runtimes."""
    console = Console(width=None if sys.stdout.isatty() else 180)
    quiet_peers()
    every = suites()
    if list_only:
        for broker, systems in every.items():
            for cls in systems:
                console.print(f"{broker:9} {cls.key:24} {cls.label}")
        return
    chosen = BROKERS if "all" in brokers else tuple(b for b in BROKERS if b in brokers)
    keys = {k.strip() for item in only for k in item.split(",") if k.strip()}
    known = {cls.key for systems in every.values() for cls in systems}
    unknown = keys - known
    if unknown:
        raise click.BadParameter(f"unknown scenario {', '.join(sorted(unknown))}; see --list", param_hint="--only")
    plan = {b: [c for c in every[b] if not keys or c.key in keys] for b in chosen}
    plan = {b: systems for b, systems in plan.items() if systems}
    if not plan:
        raise click.UsageError("no scenario selected")
    workload = Workload(jobs=jobs, concurrency=concurrency, rate=rate, batch=batch, timeout=timeout)
    results = anyio.run(run_all, plan, workload, repeat, console, progress)
    print_report(console, results, workload)
    if write:
        path = write_json(results, workload, sys.argv[1:])
        console.print(f"results written to {path}")
    if plot:
        from benchmarks.plot import plot as draw
        from benchmarks.report import RESULTS_DIR

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        picture = draw(results, RESULTS_DIR / f"{path.stem if write else 'latest'}.png")
        console.print(f"chart written to {picture}" if picture else "no chart: matplotlib is not installed")


if __name__ == "__main__":
    main()

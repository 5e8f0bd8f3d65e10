"""The command line: ``asyncjobs worker``, ``asyncjobs dead ...``, ``asyncjobs stats``, ``asyncjobs demo``.

Every failure a user can cause (bad URL, unknown scheme, missing module, contradictory settings)
exits non-zero with a one-line reason.
"""

from __future__ import annotations

import importlib
import logging
import sys

import anyio
import click
from rich.table import Table

from asyncjobs.app import BROKER_URL_ENV
from asyncjobs.cli_common import OneLineGroup, console, load_app, run, task_queues, when
from asyncjobs.cli_dead import dead, stats
from asyncjobs.config import WorkerConfig
from asyncjobs.errors import AsyncJobsError
from asyncjobs.extras import version
from asyncjobs.logsetup import LogFormat, configure, job_lines
from asyncjobs.worker import Worker

BROKER_CLOSE_SECONDS = 5.0  # a worker's broker connection closes within this after its last settle

__all__ = ["load_app", "main", "task_queues"]


@click.group(cls=OneLineGroup)
@click.version_option(version=version(), prog_name="asyncjobs")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Logging level.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="ASYNCJOBS_LOG_FORMAT",
    help="Log lines as text, or one JSON object per line ($ASYNCJOBS_LOG_FORMAT).",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, log_format: LogFormat) -> None:
    """asyncjobs: run workers and inspect queues."""
    configure(log_level, log_format, one_shot=ctx.invoked_subcommand != "worker")


@main.command()
@click.argument("app_target", metavar="MODULE:APP")
@click.option("--broker", "broker_url", envvar=BROKER_URL_ENV, help="Broker URL (default: the app's, else memory://).")
@click.option(
    "-q", "--queue", "queues", multiple=True, help="Queue to consume (repeatable). Default: the queues of the app's tasks."
)
@click.option("-c", "--concurrency", default=10, show_default=True, help="Jobs running at once.")
@click.option("--prefetch", type=int, default=None, help="Leases held at once (default: 2 x concurrency).")
@click.option("--lease", "lease_seconds", default=30.0, show_default=True, help="Lease length in seconds.")
@click.option(
    "--heartbeat",
    "heartbeat_seconds",
    type=float,
    default=None,
    help="Seconds between lease extensions (default lease/3; 0: off).",
)
@click.option(
    "--drain", "drain_seconds", default=30.0, show_default=True, help="Seconds running jobs may finish on shutdown."
)
@click.option(
    "--stall", "stall_seconds", default=0.5, show_default=True, help="Report event-loop stalls longer than this."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (needs the otel extra).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics server binds (0.0.0.0: every interface, for a scraper in another container).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes, under one supervisor that restarts one that dies and forwards SIGTERM/SIGINT.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as text, or one JSON object per line (the same as asyncjobs --log-format).",
)
@click.option("--log-jobs", is_flag=True, help="Log one INFO line per job outcome (retries and dead letters always are).")
def worker(
    app_target: str,
    broker_url: str | None,
    queues: tuple[str, ...],
    concurrency: int,
    prefetch: int | None,
    lease_seconds: float,
    heartbeat_seconds: float | None,
    drain_seconds: float,
    stall_seconds: float,
    metrics_port: int | None,
    metrics_host: str,
    workers: int,
    log_format: LogFormat | None,
    log_jobs: bool,
) -> None:
    """Run a worker for the app at MODULE:APP until SIGTERM/SIGINT (a second signal stops at once)."""
    if log_format is not None:
        configure(logging.getLevelName(logging.getLogger().level), log_format, one_shot=False)
    job_lines(log_jobs)
    app = load_app(app_target)
    if broker_url:
        app.use_broker(broker_url)
    try:
        config = WorkerConfig(
            queues=queues or task_queues(app),
            concurrency=concurrency,
            prefetch=prefetch,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            drain_seconds=drain_seconds,
            stall_seconds=stall_seconds,
        )
        config.check_tasks(app.tasks.values())
        app.broker  # noqa: B018 - resolve the URL now, so a bad one exits before any work
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from None
    if workers > 1:
        if metrics_port is not None:
            raise click.UsageError("--metrics-port serves one process: run one worker per port, not --workers")
        from asyncjobs.supervisor import Supervisor

        # each process runs this same command line; the last --workers wins, so it runs one worker
        command = [sys.executable, "-m", "asyncjobs.cli", *sys.argv[1:], "--workers", "1"]
        sys.exit(Supervisor(command, workers, drain_seconds).run())

    async def work() -> None:
        if metrics_port is None:
            await Worker(app, config).run()
            return
        from asyncjobs.metrics_server import serve_metrics  # optional: needs the otel extra

        async with serve_metrics(metrics_port, app.broker, config.queues, host=metrics_host):
            await Worker(app, config).run()

    async def serve() -> None:
        try:
            await work()
        finally:  # a connection left open would be torn down with the event loop, its client's tasks pending
            with anyio.CancelScope(shield=True), anyio.move_on_after(BROKER_CLOSE_SECONDS):
                await app.broker.close()

    run(serve)


main.add_command(dead)
main.add_command(stats)


@main.group()
def dedupe() -> None:
    """Inspect idempotency records."""


@dedupe.command("show")
@click.argument("key")
@click.option("--store", "store_url", envvar="ASYNCJOBS_DEDUPE_URL", help="Store URL (redis://..., postgresql://...).")
@click.option("--prefix", default="asyncjobs", show_default=True, help="Redis key prefix / PostgreSQL table prefix.")
@click.option("--app", "app_target", default=None, help="MODULE:APP whose dedupe store to use.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def dedupe_show(key: str, store_url: str | None, prefix: str, app_target: str | None, as_json: bool) -> None:
    """Show the record of KEY: status, owner, lease, timestamps and its history."""
    from asyncjobs.dedupe import store_from_url

    if store_url:
        try:
            store = store_from_url(store_url, prefix=prefix)
        except AsyncJobsError as exc:
            raise click.ClickException(str(exc)) from None
    elif app_target and (found := load_app(app_target).dedupe) is not None:
        store = found
    else:
        raise click.UsageError("name the store: --store URL (or $ASYNCJOBS_DEDUPE_URL), or --app MODULE:APP with one")

    async def go() -> None:
        try:
            record = await store.get(key)
        finally:
            await store.close()
        if record is None:
            raise click.ClickException(f"no record of key {key!r} (never seen, or expired)")
        if as_json:
            console.print_json(data=record.to_json())
            return
        table = Table(title=f"key {key!r}: {record.status}")
        for column in ("status", "job", "attempt", "owner", "lease until", "updated", "expires"):
            table.add_column(column)
        lease = when(record.lease_until) if record.lease_until else "-"
        table.add_row(
            record.status,
            record.job_id or "-",
            str(record.attempt),
            record.owner or "-",
            lease,
            when(record.updated_at),
            when(record.expires_at),
        )
        history = Table(title="history (oldest first, UTC)")
        for column in ("at", "event", "job", "attempt", "owner", "detail"):
            history.add_column(column)
        for e in record.history:
            detail = e.get("error") or (f"lease until {when(e['lease_until'])}" if e.get("lease_until") else "")
            history.add_row(
                when(e.get("at", 0)),
                str(e.get("event")),
                str(e.get("job_id") or "-"),
                str(e.get("attempt", "")),
                str(e.get("owner") or "-"),
                str(detail),
            )
        console.print(table, history)

    run(go)


@main.command()
@click.option("--jobs", default=40, show_default=True, help="How many jobs of each kind to run.")
@click.option("--verbose", is_flag=True, help="Show the worker's log (retries, timeouts, dead letters).")
def demo(jobs: int, verbose: bool) -> None:
    """Run the example app on the embedded broker and print what happened to every job."""
    from asyncjobs.demo import run_demo

    if not verbose:
        for name in ("asyncjobs", "asyncjobs.jobs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    ok = run(lambda: run_demo(jobs, console))
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("app_target", metavar="MODULE:APP")
@click.argument("task_name", metavar="TASK")
@click.option("--payloads", type=click.Path(exists=True, dir_okay=False), help="JSON lines of sample arguments to run.")
@click.option("--durations", type=click.Path(exists=True, dir_okay=False), help="Recorded durations (s), one per line.")
@click.option("--runs", default=5, show_default=True, help="Runs of each sample payload.")
@click.option("-c", "--concurrency", default=1, show_default=True, help="Sample runs at once.")
@click.option("--limit", default=600.0, show_default=True, help="Seconds after which one sample run is abandoned.")
@click.option("--lease", "lease_seconds", default=30.0, show_default=True, help="The worker's lease (s) to check.")
@click.option("--heartbeat", "heartbeat_seconds", type=float, default=None, help="The worker's heartbeat (0: off).")
@click.option("--drain", "drain_seconds", default=30.0, show_default=True, help="The worker's drain time (s).")
@click.option("--keyed", is_flag=True, help="Jobs of this task are enqueued with idempotency keys.")
def size(
    app_target: str,
    task_name: str,
    payloads: str | None,
    durations: str | None,
    runs: int,
    concurrency: int,
    limit: float,
    lease_seconds: float,
    heartbeat_seconds: float | None,
    drain_seconds: float,
    keyed: bool,
) -> None:
    """Size a task's timeout, lease and heartbeat from its real durations; flag settings that cause duplicates.

    Runs the task's handler on sample payloads (--payloads) or reads recorded durations
    (--durations), prints the distribution and a recommendation, and exits 1 when the given
    settings would run jobs twice.
    """
    from pathlib import Path

    from asyncjobs import sizing
    from asyncjobs.sizing_report import measure_with_progress, report

    app = load_app(app_target)
    spec = app.tasks.get(task_name)
    if spec is None:
        raise click.ClickException(
            f"no task named {task_name!r} in {app_target} (tasks: {', '.join(sorted(app.tasks))})"
        )
    if (payloads is None) == (durations is None):
        raise click.UsageError("give exactly one of --payloads (run the handler) or --durations (recorded)")
    try:
        settings = sizing.Settings(spec.options.timeout, lease_seconds, heartbeat_seconds, drain_seconds, keyed)
        if durations is not None:
            measured = sizing.Measured(durations=sizing.read_durations(Path(durations)))
        else:
            calls = sizing.read_payloads(Path(payloads or ""))
            measured = run(lambda: measure_with_progress(console, spec, calls, runs, concurrency, limit))
        ok = report(console, task_name, measured, settings)
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if ok else 1)


main.add_command(importlib.import_module("asyncjobs.results.cli").job)  # asyncjobs job show/cancel


if __name__ == "__main__":
    main()

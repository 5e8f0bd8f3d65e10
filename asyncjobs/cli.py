"""The command line: ``asyncjobs worker``, ``asyncjobs dead ...``, ``asyncjobs stats``, ``asyncjobs demo``.

Every failure a user can cause (bad URL, unknown scheme, missing module, contradictory settings)
exits non-zero with a one-line reason.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from asyncjobs.app import BROKER_URL_ENV, DEFAULT_BROKER_URL, App
from asyncjobs.broker import Broker, from_url
from asyncjobs.config import WorkerConfig
from asyncjobs.deadletters import DeadFilter, purge, replay
from asyncjobs.errors import AsyncJobsError
from asyncjobs.worker import Worker

T = TypeVar("T")
console = Console()


def load_app(target: str) -> App:
    """Import ``module:attribute`` and return the :class:`App` it names."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.UsageError(f"expected MODULE:APP (e.g. myproject.jobs:app), got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import module {module_name!r}: {exc}") from None
    except AsyncJobsError as exc:  # a task or setting the app module declares is refused
        raise click.ClickException(f"{module_name}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise click.ClickException(f"{target!r} is not an asyncjobs.App (found {type(app).__name__})")
    return app


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function, turning asyncjobs errors into a one-line exit."""
    try:
        return anyio.run(fn)
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from None
    except (ConnectionError, OSError) as exc:
        raise click.ClickException(f"cannot reach the broker: {exc}") from None


def make_broker(url: str | None, app_target: str | None) -> Broker:
    """The broker named by ``--broker``, else the app's, else ``$ASYNCJOBS_BROKER_URL``/``memory://``."""
    if url:
        return _from_url(url)
    if app_target:
        app = load_app(app_target)
        try:
            return app.broker
        except AsyncJobsError as exc:
            raise click.ClickException(str(exc)) from None
    return _from_url(os.environ.get(BROKER_URL_ENV, DEFAULT_BROKER_URL))


def _from_url(url: str) -> Broker:
    try:
        return from_url(url)
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="asyncjobs", prog_name="asyncjobs")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Logging level.",
)
def main(log_level: str) -> None:
    """asyncjobs: run workers and inspect queues."""
    handler = logging.StreamHandler()
    handler.setFormatter(LiteralFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler])


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
    help="Serve Prometheus metrics on this port (needs asyncjobs[otel]).",
)
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
) -> None:
    """Run a worker for the app at MODULE:APP until SIGTERM/SIGINT (a second signal stops at once)."""
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

    async def serve() -> None:
        if metrics_port is None:
            await Worker(app, config).run()
            return
        from asyncjobs.metrics_server import serve_metrics  # optional: needs asyncjobs[otel]

        async with serve_metrics(metrics_port, app.broker, config.queues):
            await Worker(app, config).run()

    run(serve)


def task_queues(app: App) -> tuple[str, ...]:
    """The queues the app's tasks are enqueued to, in name order (``default`` when it has none)."""
    return tuple(sorted({spec.options.queue for spec in app.tasks.values()})) or ("default",)


@main.group()
def dead() -> None:
    """Inspect and act on dead letters."""


def _dead_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--app", "app_target", default=None, help="MODULE:APP whose broker to use.")(fn)
    fn = click.option("--broker", "broker_url", default=None, envvar=BROKER_URL_ENV, help="Broker URL.")(fn)
    return click.option("-q", "--queue", default="default", show_default=True, help="Queue name.")(fn)


def _filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.argument("ids", nargs=-1)(fn)
    fn = click.option("--all", "everything", is_flag=True, help="Act on every dead letter of the queue.")(fn)
    fn = click.option("--task", default=None, help="Only tasks matching this name (glob).")(fn)
    fn = click.option("--reason", default=None, help="Only this reason (permanent, max_attempts, malformed...).")(fn)
    return click.option("--error", "error_type", default=None, help="Only this error class name.")(fn)


def literal(value: str) -> Text:
    """``value`` as plain text for the terminal: no markup read, control characters and lone surrogates escaped."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch.isprintable() and not 0xD800 <= code <= 0xDFFF:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return Text("".join(out))


class LiteralFormatter(logging.Formatter):
    """Log lines with every control character but the newline escaped: a job id, task name or error
    message from a foreign producer cannot send escape sequences to the operator's terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, made literal."""
        return "\n".join(literal(line).plain for line in super().format(record).split("\n"))


def _when(ts: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"
    except (ValueError, OverflowError, OSError):
        return repr(ts)


@dead.command("list")
@_dead_options
@click.option("--limit", default=50, show_default=True, help="Newest N dead letters.")
def dead_list(queue: str, broker_url: str | None, app_target: str | None, limit: int) -> None:
    """List dead letters as a table (newest first)."""
    broker = make_broker(broker_url, app_target)

    async def go() -> None:
        await broker.connect()
        try:
            letters = await broker.list_dead(queue, limit=limit)
        finally:
            await broker.close()
        if not console.is_terminal:  # a pipe or a file: one tab-separated line per letter, ids whole
            click.echo("id\ttask\treason\terror\tattempts\tfailed_at_utc")
            for d in letters:
                cells = (d.id, d.info.task or "?", d.info.reason, d.info.error_type, str(d.info.attempts))
                click.echo("\t".join([*(literal(c).plain for c in cells), _when(d.info.failed_at)]))
            return
        table = Table(title=literal(f"dead letters of {queue!r} ({len(letters)} shown)"))
        table.add_column("id", overflow="fold", no_wrap=False, min_width=32)
        for column in ("task", "reason", "error", "attempts", "failed at (UTC)"):
            table.add_column(column, overflow="fold")
        for d in letters:
            table.add_row(
                literal(d.id),
                literal(d.info.task or "?"),
                literal(d.info.reason),
                literal(d.info.error_type),
                str(d.info.attempts),
                _when(d.info.failed_at),
            )
        console.print(table)

    run(go)


@dead.command("show")
@click.argument("dead_id")
@_dead_options
def dead_show(dead_id: str, queue: str, broker_url: str | None, app_target: str | None) -> None:
    """Show one dead letter: envelope, error, traceback and attempt history."""
    broker = make_broker(broker_url, app_target)

    async def go() -> None:
        await broker.connect()
        try:
            letter = await broker.get_dead(queue, dead_id)
        finally:
            await broker.close()
        if letter is None:
            raise click.ClickException(f"no dead letter {dead_id!r} in queue {queue!r}")
        try:
            envelope: Any = json.loads(letter.body)
            json.dumps(envelope)  # it must also be shown again (a very deep body parses but may not print)
        except (ValueError, RecursionError):
            envelope = repr(letter.body)
        doc = {"id": letter.id, "queue": letter.queue, "envelope": envelope, **letter.info.to_json()}
        # ensure_ascii: control characters, escapes and lone surrogates are shown as \u escapes, never sent raw
        click.echo(json.dumps(doc, ensure_ascii=True, indent=2, default=repr))

    run(go)


def _where(
    ids: tuple[str, ...], everything: bool, task: str | None, reason: str | None, error_type: str | None
) -> DeadFilter:
    where = DeadFilter(ids=ids, task=task, reason=reason, error_type=error_type)
    if where == DeadFilter() and not everything:
        raise click.UsageError("name dead-letter ids, a filter (--task/--reason/--error), or --all")
    return where


@dead.command("replay")
@_dead_options
@_filter_options
def dead_replay(
    queue: str,
    broker_url: str | None,
    app_target: str | None,
    ids: tuple[str, ...],
    everything: bool,
    task: str | None,
    reason: str | None,
    error_type: str | None,
) -> None:
    """Enqueue dead letters again as first attempts (by id, by filter, or --all)."""
    broker, where = make_broker(broker_url, app_target), _where(ids, everything, task, reason, error_type)

    failures: list[tuple[str, str]] = []

    async def go() -> int:
        await broker.connect()
        try:
            return await replay(broker, queue, where, failures)
        finally:
            await broker.close()

    click.echo(f"replayed {run(go)} dead letters of {queue!r}")
    for dead_id, why in failures:
        click.echo(f"could not replay {dead_id!r}: {why}".encode("ascii", "backslashreplace").decode(), err=True)
    if failures:
        raise SystemExit(1)


@dead.command("purge")
@_dead_options
@_filter_options
def dead_purge(
    queue: str,
    broker_url: str | None,
    app_target: str | None,
    ids: tuple[str, ...],
    everything: bool,
    task: str | None,
    reason: str | None,
    error_type: str | None,
) -> None:
    """Delete dead letters (by id, by filter, or --all)."""
    broker, where = make_broker(broker_url, app_target), _where(ids, everything, task, reason, error_type)

    async def go() -> int:
        await broker.connect()
        try:
            return await purge(broker, queue, where)
        finally:
            await broker.close()

    click.echo(f"purged {run(go)} dead letters of {queue!r}")


@main.command()
@_dead_options
def stats(queue: str, broker_url: str | None, app_target: str | None) -> None:
    """Show a queue's ready, scheduled, in-flight and dead counts."""
    broker = make_broker(broker_url, app_target)

    async def go() -> None:
        await broker.connect()
        try:
            s = await broker.stats(queue)
        finally:
            await broker.close()
        table = Table(title=f"queue {queue!r}")
        for column in ("ready", "scheduled", "in flight", "dead", "oldest ready (s)"):
            table.add_column(column, justify="right")
        age = "-" if s.oldest_ready_age is None else f"{s.oldest_ready_age:.1f}"
        table.add_row(str(s.ready), str(s.scheduled), str(s.in_flight), str(s.dead), age)
        console.print(table)

    run(go)


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
        lease = _when(record.lease_until) if record.lease_until else "-"
        table.add_row(
            record.status,
            record.job_id or "-",
            str(record.attempt),
            record.owner or "-",
            lease,
            _when(record.updated_at),
            _when(record.expires_at),
        )
        history = Table(title="history (oldest first, UTC)")
        for column in ("at", "event", "job", "attempt", "owner", "detail"):
            history.add_column(column)
        for e in record.history:
            detail = e.get("error") or (f"lease until {_when(e['lease_until'])}" if e.get("lease_until") else "")
            history.add_row(
                _when(e.get("at", 0)),
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
        logging.getLogger("asyncjobs").setLevel(logging.CRITICAL)
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

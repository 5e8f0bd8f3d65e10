"""``asyncjobs job show ID`` and ``asyncjobs job cancel ID``: a job's handle from the command line."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.table import Table
from rich.text import Text

from asyncjobs.errors import AsyncJobsError
from asyncjobs.results.handle import cancel_in, store_from_url
from asyncjobs.results.store import JobStatus, ResultStore, status_of

T = TypeVar("T")
RESULTS_URL_ENV = "ASYNCJOBS_RESULTS_URL"
RESULT_SHOWN = 2_000  # characters of a result shown in the table (--json prints it whole)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """The command line's runner (imported late: ``asyncjobs.cli`` imports this module)."""
    from asyncjobs.cli_common import run as base_run

    return base_run(fn)


def literal(value: str) -> Text:
    """``value`` made safe for the terminal (see :func:`asyncjobs.cli.literal`)."""
    from asyncjobs.logsetup import literal as base_literal

    return base_literal(value)


def _when(ts: float) -> str:
    from asyncjobs.cli_common import when as base_when

    return base_when(ts)


@click.group()
def job() -> None:
    """Look at one job (status, attempts, progress, result or error) and cancel it."""


def _store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--app", "app_target", default=None, help="MODULE:APP whose result store to use.")(fn)
    fn = click.option("--prefix", default="asyncjobs", show_default=True, help="Redis key prefix / table prefix.")(fn)
    return click.option(
        "--results",
        "results_url",
        envvar=RESULTS_URL_ENV,
        default=None,
        help="Result store URL (redis://..., postgresql://...); default: the app's store.",
    )(fn)


def _store(results_url: str | None, prefix: str, app_target: str | None) -> ResultStore:
    try:
        if results_url:
            return store_from_url(results_url, prefix=prefix)
        if app_target:
            from asyncjobs.cli import load_app

            app = load_app(app_target)
            found = app.results
            if found is None:
                raise click.ClickException(f"the app's broker {app.broker_url.split(':')[0]}:// keeps no results")
            return found
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from None
    raise click.UsageError("name the store: --results URL (or $ASYNCJOBS_RESULTS_URL), or --app MODULE:APP")


@job.command("show")
@click.argument("job_id")
@_store_options
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def job_show(job_id: str, results_url: str | None, prefix: str, app_target: str | None, as_json: bool) -> None:
    """Show job JOB_ID: status, attempts, history, progress and result (or error)."""
    store = _store(results_url, prefix, app_target)

    async def go() -> tuple[JobStatus, str | None]:
        try:
            record, marked = await store.get(job_id)
        finally:
            await store.close()
        text = record.get("result") if record is not None else None
        return status_of(job_id, record, marked), text if isinstance(text, str) else None

    status, result = run(go)
    if status.state == "unknown":
        raise click.ClickException(
            f"no record of job {job_id!r}: never seen, expired, or its task keeps no results (keep_result=)"
        )
    if as_json:
        doc = status.to_json()
        doc["result"] = json.loads(result) if result is not None else None
        # ensure_ascii: control characters from a handler's result or error are shown escaped, never sent raw
        click.echo(json.dumps(doc, ensure_ascii=True, indent=2, default=repr))
        return
    from asyncjobs.cli_common import console

    console.print(_summary(status, result), _history(status))


def _summary(status: JobStatus, result: str | None) -> Table:
    table = Table(title=literal(f"job {status.id}: {status.state}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, str | None]] = [
        ("state", status.state + (" (cancel requested)" if status.cancel_requested else "")),
        ("task", status.task),
        ("attempt", str(status.attempt) if status.attempt else None),
        ("worker", status.worker),
        ("next at (UTC)", _when(status.next_at) if status.next_at else None),
        ("progress", f"{status.progress:.0%}" if status.progress is not None else None),
        ("message", status.message),
        ("reason", status.reason if status.state in ("dead", "cancelled") else None),
        ("error", status.error),
        ("updated (UTC)", _when(status.updated_at) if status.updated_at else None),
    ]
    if result is not None:
        shown = result if len(result) <= RESULT_SHOWN else f"{result[:RESULT_SHOWN]}… ({len(result)} characters)"
        rows.append(("result", shown))
    for name, value in rows:
        if value:
            table.add_row(name, literal(value))
    return table


def _history(status: JobStatus) -> Table:
    table = Table(title="history (oldest first, UTC)")
    for column in ("at", "status", "attempt", "worker", "reason"):
        table.add_column(column, overflow="fold")
    for entry in status.history:
        at = entry.get("updated_at")
        table.add_row(
            _when(at) if isinstance(at, int | float) else "-",
            literal(str(entry.get("status", "?"))),
            str(entry.get("attempt", "")),
            literal(str(entry.get("worker") or "-")),
            literal(str(entry.get("reason") or "")),
        )
    return table


@job.command("cancel")
@click.argument("job_id")
@_store_options
def job_cancel(job_id: str, results_url: str | None, prefix: str, app_target: str | None) -> None:
    """Cancel job JOB_ID: a queued or scheduled job will not run, a running one stops within a heartbeat."""
    store = _store(results_url, prefix, app_target)

    async def go() -> tuple[JobStatus, bool]:
        try:
            return await cancel_in(store, job_id)
        finally:
            await store.close()

    status, marked = run(go)
    if not marked:
        click.echo(literal(f"job {job_id} is {status.state} already: nothing to cancel").plain)
        return
    what = "cancel requested (it stops within a heartbeat)" if status.cancel_requested else status.state
    click.echo(literal(f"job {job_id}: {what}").plain)

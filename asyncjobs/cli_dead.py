"""``asyncjobs dead list|show|replay|purge`` and ``asyncjobs stats``: read and act on a broker's queues.

Without ``-q`` a command covers the queues of the app's tasks (``--app``), else ``default``. A
named queue that does not exist on the broker is "no such queue" (exit 1), and nothing is
created to find that out: a queue the app's tasks use but that holds nothing yet reads as empty.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import click
from rich.table import Table

from asyncjobs.app import BROKER_URL_ENV
from asyncjobs.broker import Broker, DeadLetter, QueueStats
from asyncjobs.cli_common import console, load_app, make_broker, run, task_queues, when
from asyncjobs.deadletters import DeadFilter, purge, replay
from asyncjobs.logsetup import literal

T = TypeVar("T")


class Target:
    """The broker a command uses, the queues it covers, and those the app declares (empty without ``--app``)."""

    def __init__(self, broker_url: str | None, app_target: str | None, queue: str | None) -> None:
        app = load_app(app_target) if app_target else None
        self.broker: Broker = make_broker(broker_url, app_target if not broker_url else None, app=app)
        self.declared: frozenset[str] = frozenset(task_queues(app)) if app else frozenset()
        self.queues: tuple[str, ...] = (queue,) if queue else (tuple(sorted(self.declared)) or ("default",))

    async def existing(self) -> list[str]:
        """The covered queues that exist (or that the app declares): ``no such queue`` when none of those named does."""
        check: Callable[[str], Awaitable[bool]] | None = getattr(self.broker, "queue_exists", None)
        found = [q for q in self.queues if check is None or await check(q)]
        missing = [q for q in self.queues if q not in found and q not in self.declared]
        if missing:
            names = ", ".join(repr(q) for q in missing)
            raise click.ClickException(f"no such queue {names} on this broker (check -q, --broker and its prefix)")
        return found

    def each(self, fn: Callable[[str], Awaitable[T]], empty: T) -> list[tuple[str, T]]:
        """Connect, run ``fn`` on every covered queue (``empty`` for a declared one that does not exist yet), close."""

        async def go() -> list[tuple[str, T]]:
            await self.broker.connect()
            try:
                found = await self.existing()
                return [(q, await fn(q) if q in found else empty) for q in self.queues]
            finally:
                await self.broker.close()

        return run(go)


def _dead_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--app", "app_target", default=None, help="MODULE:APP whose broker and queues to use.")(fn)
    fn = click.option("--broker", "broker_url", default=None, envvar=BROKER_URL_ENV, help="Broker URL.")(fn)
    return click.option("-q", "--queue", default=None, help="Queue name (default: the app's queues, else default).")(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")(fn)


def _filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.argument("ids", nargs=-1)(fn)
    fn = click.option("--all", "everything", is_flag=True, help="Act on every dead letter of the queue.")(fn)
    fn = click.option("--task", default=None, help="Only tasks matching this name (glob).")(fn)
    fn = click.option("--reason", default=None, help="Only this reason (permanent, max_attempts, malformed...).")(fn)
    return click.option("--error", "error_type", default=None, help="Only this error class name.")(fn)


def _echo_json(doc: Any, indent: int | None = None) -> None:
    # ensure_ascii: control characters, escapes and lone surrogates are shown as \u escapes, never sent raw
    click.echo(json.dumps(doc, ensure_ascii=True, indent=indent, default=repr))


def letter_doc(letter: DeadLetter, with_body: bool) -> dict[str, Any]:
    """A dead letter as JSON: id, queue, its info and (``with_body``) its envelope as received."""
    if not with_body:
        return {"id": letter.id, "queue": letter.queue, **letter.info.to_json()}
    try:
        envelope: Any = json.loads(letter.body)
        json.dumps(envelope)  # it must also be shown again (a very deep body parses but may not print)
    except (ValueError, RecursionError):
        envelope = repr(letter.body)
    return {"id": letter.id, "queue": letter.queue, "envelope": envelope, **letter.info.to_json()}


@click.group()
def dead() -> None:
    """Inspect and act on dead letters."""


@dead.command("list")
@_dead_options
@_json_option
@click.option("--limit", default=50, show_default=True, help="Newest N dead letters of each queue.")
def dead_list(queue: str | None, broker_url: str | None, app_target: str | None, limit: int, as_json: bool) -> None:
    """List dead letters, newest first: a table on a terminal, tab-separated lines (ids whole) in a pipe."""
    target = Target(broker_url, app_target, queue)
    none: list[DeadLetter] = []
    found = target.each(lambda q: target.broker.list_dead(q, limit=limit), none)
    letters = [d for _, ds in found for d in ds]
    if as_json:
        for d in letters:
            _echo_json(letter_doc(d, with_body=False))
        return
    if not console.is_terminal:  # a pipe or a file: one tab-separated line per letter, ids whole
        click.echo("id\tqueue\ttask\treason\terror\tattempts\tfailed_at_utc")
        for d in letters:
            cells = (d.id, d.queue, d.info.task or "?", d.info.reason, d.info.error_type, str(d.info.attempts))
            click.echo("\t".join([*(literal(c).plain for c in cells), when(d.info.failed_at)]))
        return
    table = Table(title=literal(f"dead letters of {', '.join(target.queues)} ({len(letters)} shown)"))
    table.add_column("id", overflow="fold", no_wrap=False, min_width=32)
    for column in ("queue", "task", "reason", "error", "attempts", "failed at (UTC)"):
        table.add_column(column, overflow="fold")
    for d in letters:
        texts = (d.id, d.queue, d.info.task or "?", d.info.reason, d.info.error_type)
        table.add_row(*(literal(c) for c in texts), str(d.info.attempts), when(d.info.failed_at))
    console.print(table)


@dead.command("show")
@click.argument("dead_id")
@_dead_options
@_json_option
def dead_show(dead_id: str, queue: str | None, broker_url: str | None, app_target: str | None, as_json: bool) -> None:
    """Show one dead letter as JSON: envelope, error, traceback and attempt history (searches every covered queue)."""
    target = Target(broker_url, app_target, queue)
    found = [d for _, d in target.each(lambda q: target.broker.get_dead(q, dead_id), None) if d is not None]
    if not found:
        raise click.ClickException(f"no dead letter {dead_id!r} in queue {', '.join(map(repr, target.queues))}")
    _echo_json(letter_doc(found[0], with_body=True), indent=None if as_json else 2)


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
    queue: str | None,
    broker_url: str | None,
    app_target: str | None,
    ids: tuple[str, ...],
    everything: bool,
    task: str | None,
    reason: str | None,
    error_type: str | None,
) -> None:
    """Enqueue dead letters again as first attempts (by id, by filter, or --all)."""
    where = _where(ids, everything, task, reason, error_type)
    target = Target(broker_url, app_target, queue)
    failures: list[tuple[str, str]] = []
    for q, n in target.each(lambda q: replay(target.broker, q, where, failures), 0):
        click.echo(f"replayed {n} dead letters of {q!r}")
    for dead_id, why in failures:
        click.echo(f"could not replay {dead_id!r}: {why}".encode("ascii", "backslashreplace").decode(), err=True)
    if failures:
        raise SystemExit(1)


@dead.command("purge")
@_dead_options
@_filter_options
def dead_purge(
    queue: str | None,
    broker_url: str | None,
    app_target: str | None,
    ids: tuple[str, ...],
    everything: bool,
    task: str | None,
    reason: str | None,
    error_type: str | None,
) -> None:
    """Delete dead letters (by id, by filter, or --all)."""
    where = _where(ids, everything, task, reason, error_type)
    target = Target(broker_url, app_target, queue)
    for q, n in target.each(lambda q: purge(target.broker, q, where), 0):
        click.echo(f"purged {n} dead letters of {q!r}")


@click.command()
@_dead_options
@_json_option
def stats(queue: str | None, broker_url: str | None, app_target: str | None, as_json: bool) -> None:
    """Show each queue's ready, scheduled, in-flight and dead counts."""
    target = Target(broker_url, app_target, queue)
    found: Sequence[tuple[str, QueueStats]] = target.each(target.broker.stats, QueueStats(0, 0, 0, 0))
    if as_json:
        for q, s in found:
            _echo_json({"queue": q, **asdict(s)})
        return
    table = Table(title=literal(f"queue {', '.join(target.queues)}"))
    for column in ("queue", "ready", "scheduled", "in flight", "dead", "oldest ready (s)"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for q, s in found:
        age = "-" if s.oldest_ready_age is None else f"{s.oldest_ready_age:.1f}"
        table.add_row(literal(q), str(s.ready), str(s.scheduled), str(s.in_flight), str(s.dead), age)
    console.print(table)

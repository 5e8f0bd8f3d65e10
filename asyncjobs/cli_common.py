"""What every command shares: loading the app, making its broker, running a command, one-line errors."""

from __future__ import annotations

import datetime
import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import click
from rich.console import Console

from asyncjobs.app import BROKER_URL_ENV, DEFAULT_BROKER_URL, App
from asyncjobs.broker import Broker, from_url
from asyncjobs.errors import AsyncJobsError

T = TypeVar("T")
CLOSE_TURNS = 5  # turns of the event loop after a command, for the close callbacks of client libraries
CLOSE_WAIT = 1.0  # then at most this long for the tasks those callbacks started (aio-pika's) to end


async def _others_finished(within: float) -> None:
    """Wait up to ``within`` seconds until no task but this one is left on the loop."""
    import asyncio

    me = asyncio.current_task()
    deadline = anyio.current_time() + within
    while anyio.current_time() < deadline:
        if not [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
            return
        await anyio.sleep(0.01)
console = Console()
log = logging.getLogger("asyncjobs.cli")


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

    async def then_let_callbacks_finish() -> T:
        try:
            return await fn()
        finally:  # a client library's close callbacks still pending would be destroyed with the loop
            with anyio.CancelScope(shield=True):
                for _ in range(CLOSE_TURNS):
                    await anyio.lowlevel.checkpoint()
                await _others_finished(CLOSE_WAIT)

    try:
        return anyio.run(then_let_callbacks_finish)
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except AsyncJobsError as exc:
        raise click.ClickException(str(exc)) from None
    except (ConnectionError, OSError) as exc:
        raise click.ClickException(f"cannot reach the broker: {exc}") from None
    except Exception as exc:  # a client library's own error (unreachable store, refused login...): one line
        log.debug("the command failed", exc_info=exc)
        raise click.ClickException(f"{type(exc).__module__.partition('.')[0]}: {type(exc).__name__}: {exc}") from None


def make_broker(url: str | None, app_target: str | None, *, app: App | None = None) -> Broker:
    """The broker named by ``--broker``, else the app's (``app``, or loaded from ``app_target``), else
    ``$ASYNCJOBS_BROKER_URL``/``memory://``."""
    if url:
        return _from_url(url)
    if app is not None or app_target:
        app = app or load_app(app_target or "")
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




def task_queues(app: App) -> tuple[str, ...]:
    """The queues the app's tasks are enqueued to, in name order (``default`` when it has none)."""
    return tuple(sorted({spec.options.queue for spec in app.tasks.values()})) or ("default",)




def when(ts: float) -> str:
    """A wall-clock time as ``YYYY-MM-DD HH:MM:SS`` (UTC), ``-`` for none."""
    try:
        return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"
    except (ValueError, OverflowError, OSError):
        return repr(ts)


class OneLineGroup(click.Group):
    """A command group whose every error, usage errors too, is one line on stderr and a non-zero exit."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; see :meth:`click.Group.main`."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(0)

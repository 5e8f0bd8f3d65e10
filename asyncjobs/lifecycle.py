"""Worker lifecycle hooks: what a worker opens before its first fetch and closes after its last settle.

Register hooks on the app (``@app.on_startup``, ``@app.on_shutdown``); each is an ``async def``
taking no arguments that keeps what it opens on ``app.state``::

    @app.on_startup
    async def open_pool() -> None:
        app.state.db = await create_pool(DSN)

    @app.on_shutdown
    async def close_pool() -> None:
        await app.state.db.close()

Every :meth:`Worker.run <asyncjobs.Worker.run>` runs the startup hooks once, in the order they
were registered, after connecting to the broker and before the first fetch; then it works; then,
after the last job is settled (or given back), the shutdown hooks, in reverse order. A startup hook
that raises stops the worker before it takes any job: :class:`~asyncjobs.errors.StartupError`
names the hook and the error (``asyncjobs worker`` prints it as one line and exits 1), and the
shutdown hooks do not run (a startup hook closes what it opened itself when it fails halfway).
A shutdown hook that raises, or runs longer than :data:`SHUTDOWN_SECONDS`, is logged and the
others still run: by then every job is settled, so the worker still stops cleanly.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from asyncjobs.errors import ConfigError, StartupError

Hook = Callable[[], Awaitable[object]]
log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0
"""How long each shutdown hook may run before it is abandoned (so a worker always stops)."""


def hook_name(hook: Hook) -> str:
    """``module.qualname`` of a hook, for messages."""
    return f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', repr(hook))}"


class Lifecycle:
    """The startup and shutdown hooks of one app."""

    def __init__(self) -> None:
        self.startup: list[Hook] = []
        self.shutdown: list[Hook] = []

    def add(self, hooks: list[Hook], hook: Hook) -> Hook:
        """Register ``hook`` in ``hooks`` after checking it is an ``async def`` of no arguments."""
        if not (inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(inspect.unwrap(hook))):
            raise ConfigError(f"lifecycle hook {hook_name(hook)!r} must be an 'async def' function")
        try:
            inspect.signature(hook).bind()
        except TypeError:
            raise ConfigError(
                f"lifecycle hook {hook_name(hook)!r} must take no arguments (keep what it opens on app.state)"
            ) from None
        hooks.append(hook)
        return hook

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the startup hooks; on exit (however the body ends), the shutdown hooks in reverse order."""
        for hook in self.startup:
            try:
                await hook()
            except Exception as exc:
                log.debug("startup hook %s failed", hook_name(hook), exc_info=exc)
                message = " ".join(str(exc).split())  # one line, whatever the error's text
                raise StartupError(f"startup hook {hook_name(hook)} failed: {type(exc).__name__}: {message}") from exc
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                for hook in reversed(self.shutdown):
                    await _shut_down(hook)


async def _shut_down(hook: Hook) -> None:
    with anyio.move_on_after(SHUTDOWN_SECONDS) as scope:
        try:
            await hook()
        except Exception as exc:
            log.error("shutdown hook %s failed: %s: %s", hook_name(hook), type(exc).__name__, exc, exc_info=exc)
    if scope.cancelled_caught:
        log.error("shutdown hook %s did not finish within %gs; abandoned", hook_name(hook), SHUTDOWN_SECONDS)

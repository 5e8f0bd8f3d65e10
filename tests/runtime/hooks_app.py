"""Apps with lifecycle hooks, run by ``asyncjobs worker`` in the lifecycle tests.

``app`` opens a log file named by ``$HOOKS_LOG`` at startup, its handler writes through it, and
shutdown writes a last line and closes it. ``failing`` has a startup hook that cannot connect.
"""

from __future__ import annotations

import os

import anyio

import asyncjobs
from asyncjobs import App

app = App()


@app.on_startup
async def open_log() -> None:
    """Open the shared resource once per worker."""
    app.state.log = await anyio.open_file(os.environ["HOOKS_LOG"], "a", buffering=1)
    await app.state.log.write("startup\n")


@app.on_shutdown
async def close_log() -> None:
    """Close it after the last job."""
    await app.state.log.write("shutdown\n")
    await app.state.log.aclose()


@app.task(name="hooks.record")
async def record(n: int) -> None:
    """Write through the resource the startup hook opened, found from the job's context."""
    job = asyncjobs.current_job()
    await job.app.state.log.write(f"job {n} attempt {job.attempt} queue {job.queue}\n")


failing = App()


@failing.on_startup
async def connect_database() -> None:
    """A startup hook whose resource is down."""
    raise ConnectionRefusedError("database at 127.0.0.1:1 refused the connection\n(is it running?)")


@failing.task(name="hooks.never")
async def never() -> None:
    """Must never run: the worker stops before its first fetch."""

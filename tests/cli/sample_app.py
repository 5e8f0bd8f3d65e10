"""An app for the command-line tests."""

from __future__ import annotations

import anyio

from asyncjobs import App

app = App()


@app.task(name="sample.nap", timeout=None)
async def nap(seconds: float) -> None:
    """Sleep (a job that can be interrupted by shutdown)."""
    await anyio.sleep(seconds)


not_an_app = 42

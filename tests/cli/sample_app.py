"""An app for the command-line tests."""

from __future__ import annotations

import time

import anyio

from asyncjobs import App

app = App()


@app.task(name="sample.nap", timeout=None)
async def nap(seconds: float) -> None:
    """Sleep (a job that can be interrupted by shutdown)."""
    await anyio.sleep(seconds)


not_an_app = 42


@app.task(name="sample.work", timeout=5)
async def work(ms: int, block_ms: int = 0) -> int:
    """Take ``ms`` milliseconds, blocking the event loop for ``block_ms`` of them (a badly written handler)."""
    if block_ms:
        time.sleep(block_ms / 1000)  # noqa: ASYNC251 - on purpose: the sizing tests detect it
    await anyio.sleep(max(ms - block_ms, 0) / 1000)
    if ms < 0:
        raise ValueError("negative")
    return ms

"""An app for the metrics endpoint test (its worker runs as a real process)."""

from __future__ import annotations

from asyncjobs import App, PermanentError

app = App()


@app.task(name="obs.ok")
async def ok(n: int) -> int:
    """Succeed."""
    return n


@app.task(name="obs.bad")
async def bad() -> None:
    """Fail for good."""
    raise PermanentError("refused")

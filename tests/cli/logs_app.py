"""An app for the log-format tests: a job that succeeds, one that fails once, one that fails for good."""

from __future__ import annotations

from asyncjobs import App, Backoff, PermanentError

app = App()
tries: dict[str, int] = {}


@app.task(name="logs.ok")
async def ok() -> None:
    """Succeed."""


@app.task(name="logs.flaky", backoff=Backoff(base=0.05, jitter=0))
async def flaky(name: str) -> None:
    """Fail the first attempt (retryable), succeed the second."""
    tries[name] = tries.get(name, 0) + 1
    if tries[name] == 1:
        raise ConnectionError("first try fails")


def check_the_invoice() -> None:
    """Where the permanent error is raised (its frame is in the log line)."""
    raise PermanentError("invoice \x1b[31m refused")


@app.task(name="logs.bad")
async def bad() -> None:
    """Fail for good, a few frames down."""
    check_the_invoice()

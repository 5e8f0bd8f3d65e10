"""An app for job-handle tests on real worker processes (``asyncjobs worker tests.jobs.jobs_app:app``).

Set by the environment: ``ASYNCJOBS_BROKER_URL``, ``JOBS_RESULTS_URL`` and ``JOBS_RESULTS_PREFIX``
(a Redis result store), ``JOBS_LOG`` (a file every run appends ``start ID``/``end ID``/``cancelled ID``
to), ``JOBS_HANG=1`` (``step`` hangs after it starts) and ``JOBS_KILL_AFTER_RESULT=1`` (the worker
kills itself with SIGKILL right after a final record is written: between the result and the ack).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import anyio

from asyncjobs import App, progress
from asyncjobs.results.redis import RedisResultStore
from asyncjobs.results.store import Write


class KillAfterResult(RedisResultStore):
    """A Redis store whose process dies by SIGKILL right after a final write, when asked to."""

    async def write_many(self, writes: Sequence[Write]) -> None:
        await super().write_many(writes)
        if any(final for *_, final in writes) and os.environ.get("JOBS_KILL_AFTER_RESULT") == "1":
            os.kill(os.getpid(), signal.SIGKILL)


def log(line: str) -> None:
    with open(os.environ["JOBS_LOG"], "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


app = App(
    os.environ.get("ASYNCJOBS_BROKER_URL", "memory://"),
    results=KillAfterResult.from_url(
        os.environ.get("JOBS_RESULTS_URL", "redis://127.0.0.1:6379/0"),
        prefix=os.environ.get("JOBS_RESULTS_PREFIX", "asyncjobs"),
    ),
)


@app.task(name="jobs.step", keep_result=600, timeout=None)
async def step(n: int) -> int:
    """Log the run; hang (``JOBS_HANG=1``) or report progress, then return ``n * 10``."""
    log(f"start {n}")
    try:
        if os.environ.get("JOBS_HANG") == "1":
            await anyio.sleep(3600)
        await progress(0.5, "half way")
        await anyio.sleep(0.05)
    except BaseException:
        log(f"cancelled {n}")
        raise
    log(f"end {n}")
    return n * 10

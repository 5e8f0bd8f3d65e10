"""Timeout: each attempt runs in its own cancel scope with the job's deadline."""

from __future__ import annotations

import logging

import anyio

from asyncjobs import instruments
from asyncjobs.errors import JobTimeout
from asyncjobs.job import Job, Outcome
from asyncjobs.middleware.chain import CallNext

log = logging.getLogger(__name__)


class TimeoutMiddleware:
    """Cancel the rest of the chain at the job's timeout and raise :class:`JobTimeout`.

    Only this job's scope is cancelled: other jobs and the worker go on. A handler that catches
    the cancellation and returns anyway is reported (log and metric) and still times out.
    """

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Run ``call_next`` under the job's deadline."""
        timeout = job.timeout
        if timeout is None:
            return await call_next(job)
        with anyio.move_on_after(timeout) as scope:
            outcome = await call_next(job)
        if not scope.cancel_called:
            return outcome
        if not scope.cancelled_caught:
            instruments.cancellation_swallowed.add(1, {"task": job.task})
            log.warning(
                "job %s (task %s, attempt %d) swallowed its cancellation at the %ss timeout; "
                "handlers must let CancelledError propagate",
                job.id,
                job.task,
                job.attempt,
                timeout,
            )
            job.state["cancellation_swallowed"] = True
        raise JobTimeout(f"job exceeded its timeout of {timeout:g}s")

"""Timeout: the handler runs in a cancel scope of its own that carries the job's deadline."""

from __future__ import annotations

import asyncio
import logging

import anyio

from asyncjobs import instruments
from asyncjobs.errors import JobTimeout
from asyncjobs.job import Job, Outcome
from asyncjobs.middleware.chain import CallNext

log = logging.getLogger(__name__)


class TimeoutMiddleware:
    """Run the rest of the chain under the job's deadline; raise :class:`JobTimeout` when it cuts the job off.

    The deadline lives on an anyio cancel scope, so ``anyio.current_effective_deadline()`` inside
    the handler reports it and a handler's own ``CancelScope(shield=True)`` sections hold against
    it. Only this job's scope is cancelled: other jobs and the worker go on.

    * The handler was cut off at its deadline: :class:`JobTimeout`, classified by the retry layer.
    * The deadline passed while the handler was in a shielded section, and it returned without
      reaching another checkpoint: its outcome stands (the work was done; running it again would
      do it twice).
    * The handler caught the cancellation and returned anyway: reported (log, metric and
      ``job.state["cancellation_swallowed"]``) and still a :class:`JobTimeout`, since the work it
      was doing when it was cancelled may be half done.

    Cancellations the worker asks for (lost lease, shutdown) come from the attempt's scope around
    the whole chain and pass through this one untouched.
    """

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Run ``call_next`` under the job's deadline."""
        return await self.wrap(call_next)(job)

    def wrap(self, call_next: CallNext) -> CallNext:
        """This layer around ``call_next`` (see :func:`~asyncjobs.middleware.chain.build_chain`)."""

        async def timeout_scope(job: Job) -> Outcome:
            timeout = job.timeout
            if timeout is None:
                return await call_next(job)
            task = asyncio.current_task()
            before = task.cancelling() if task is not None else 0
            outcome: Outcome | None = None
            swallowed = False
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                outcome = await call_next(job)
                # A cancellation the scope delivered and the handler caught leaves the task's
                # count of pending cancellations raised until the scope exits.
                swallowed = scope.cancel_called and task is not None and task.cancelling() > before
            if outcome is not None and not swallowed:
                return outcome
            if swallowed:
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

        return timeout_scope

"""Timeout: each attempt runs in its own cancel scope with the job's deadline."""

from __future__ import annotations

import logging
from typing import NoReturn

import anyio

from asyncjobs import instruments
from asyncjobs.deadlines import Deadlines
from asyncjobs.errors import JobTimeout
from asyncjobs.job import Job, Outcome
from asyncjobs.leases import Interrupted
from asyncjobs.middleware.chain import CallNext

log = logging.getLogger(__name__)


class TimeoutMiddleware:
    """Run the rest of the chain in the job's own cancel scope; raise :class:`JobTimeout` at its deadline.

    The deadline is kept by one :class:`~asyncjobs.deadlines.Deadlines` timer per worker rather
    than a timer per scope. This scope is the one the worker cancels too: when the job's lease is lost or the drain
    deadline of a shutdown passes, the handler is cancelled and :class:`~asyncjobs.leases.Interrupted`
    (not an error of the job) propagates instead. Only this job's scope is cancelled: other jobs
    and the worker go on. A handler that catches the cancellation and returns anyway is reported
    (log and metric) and still times out.
    """

    def __init__(self) -> None:
        self.deadlines = Deadlines()
        self._scope_type: type[anyio.CancelScope] | None = None

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Run ``call_next`` under the job's deadline."""
        return await self.wrap(call_next)(job)

    def wrap(self, call_next: CallNext) -> CallNext:
        """This layer around ``call_next`` (see :func:`~asyncjobs.middleware.chain.build_chain`)."""
        deadlines = self.deadlines

        async def timeout_scope(job: Job) -> Outcome:
            held = job.held
            if held is None:
                return await self._bare(job, call_next)
            if held.lost or held.stopping:
                raise Interrupted
            scope_type = self._scope_type
            if scope_type is None:  # the event loop's own scope class: anyio.CancelScope() looks it up on every call
                scope_type = self._scope_type = type(anyio.CancelScope())
            timeout = job.timeout
            with scope_type() as scope:
                held.scope, held.cancelled = scope, False  # a middleware may run the rest of the chain again
                if timeout is not None:
                    deadlines.add(held, timeout)
                    # The deadline anyio.current_effective_deadline() reports inside the handler. Set
                    # without the property, which would arm anyio's own timer: Deadlines keeps time.
                    scope._deadline = held.deadline  # type: ignore[attr-defined]
                try:
                    outcome = await call_next(job)
                finally:
                    held.scope = None
                    deadlines.running.discard(held)
            if not held.cancelled:  # every cancel of this scope goes through held.cancel()
                return outcome
            if held.lost or held.stopping:
                raise Interrupted
            self._timed_out(job, scope, timeout)

        return timeout_scope

    async def _bare(self, job: Job, call_next: CallNext) -> Outcome:
        timeout = job.timeout
        with anyio.move_on_after(timeout) as scope:
            outcome = await call_next(job)
        if not scope.cancel_called:
            return outcome
        self._timed_out(job, scope, timeout)

    def _timed_out(self, job: Job, scope: anyio.CancelScope, timeout: float | None) -> NoReturn:
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
        raise JobTimeout(f"job exceeded its timeout of {timeout or 0:g}s")

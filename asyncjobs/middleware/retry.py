"""Retry classification: turn what the handler raised into an :class:`Outcome`."""

from __future__ import annotations

from asyncjobs.errors import JobTimeout
from asyncjobs.job import Job, Outcome
from asyncjobs.middleware.chain import CallNext
from asyncjobs.retrying import classify, next_delay


class RetryMiddleware:
    """Classify errors with the task's policy: retry with backoff, or dead-letter.

    A permanent error dead-letters at once (reason ``permanent``); a retryable error on the last
    allowed attempt dead-letters with reason ``max_attempts``. Cancellation is not an error here:
    it propagates to the worker, which knows whether the lease was lost or the worker is stopping.
    """

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Run the rest of the chain and map an exception to retry or dead."""
        return await self.wrap(call_next)(job)

    def wrap(self, call_next: CallNext) -> CallNext:
        """This layer around ``call_next`` (see :func:`~asyncjobs.middleware.chain.build_chain`)."""

        async def retry_classification(job: Job) -> Outcome:
            try:
                return await call_next(job)
            except Exception as exc:
                return classify_failure(job, exc)

        return retry_classification


def classify_failure(job: Job, exc: Exception) -> Outcome:
    """The outcome of an attempt of ``job`` that raised ``exc``: retry later, or dead-letter."""
    policy = job.spec.options.retry
    reason = "timeout" if isinstance(exc, JobTimeout) else "error"
    if classify(exc, policy) == "permanent":
        return Outcome("dead", "permanent", exc)
    if job.attempt >= job.max_attempts:
        return Outcome("dead", "max_attempts", exc)
    return Outcome("retry", reason, exc, delay=next_delay(exc, job.attempt, policy))

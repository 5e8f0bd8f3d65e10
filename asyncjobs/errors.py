"""Every public error of asyncjobs, under one base class.

Which errors a job retries is data (see :mod:`asyncjobs.retrying`); the classes here only say
what went wrong.
"""

from __future__ import annotations


class AsyncJobsError(Exception):
    """Base class of every error raised by asyncjobs."""


class ConfigError(AsyncJobsError, ValueError):
    """A setting is invalid or contradicts another one; the message names the field and the fix."""


class StartupError(AsyncJobsError):
    """A worker's startup hook raised; the worker stopped before taking any job. The message names the hook."""


class BrokerURLError(ConfigError):
    """A broker URL is malformed or names a scheme no installed broker handles."""


class BrokerError(AsyncJobsError):
    """The broker refused or failed an operation (connection lost, publish not confirmed...)."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker could not be reached. Retryable."""


class QueueFullError(BrokerError):
    """The broker is at a configured bound (``memory://``'s ``max_jobs``/``max_bytes``); nothing was stored."""


class EnvelopeError(AsyncJobsError):
    """A message is not a valid asyncjobs envelope. Permanent: the message is dead-lettered."""


class UnknownTaskError(AsyncJobsError, LookupError):
    """A message names a task that this worker has not registered. Permanent."""


class PayloadTooLargeError(AsyncJobsError, ValueError):
    """An encoded job is larger than the configured maximum size."""


class Retry(AsyncJobsError):  # noqa: N818 - reads as an instruction: ``raise Retry(delay=5)``
    """Raise from a handler to ask for another attempt, optionally after ``delay`` seconds."""

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class PermanentError(AsyncJobsError):
    """Raise from a handler when retrying cannot help; the job is dead-lettered at once."""


class JobTimeout(AsyncJobsError, TimeoutError):  # noqa: N818 - the outcome is called "timeout"
    """A job ran past its timeout and was cancelled. Retryable by default."""


class LeaseLost(AsyncJobsError):  # noqa: N818 - names the event, like ``Retry``
    """The worker lost a job's lease (it expired or was taken); the handler was cancelled."""


class CancellationSwallowed(AsyncJobsError):  # noqa: N818 - names the event
    """A handler caught the cancellation of its job and returned; the runtime reports it."""


class BadOutcomeError(AsyncJobsError, TypeError):
    """A middleware (or the chain) returned something that is not an :class:`~asyncjobs.job.Outcome`.

    Usually a middleware that forgot its ``return``. The job is dead-lettered at once (reason
    ``bad_outcome``): every further attempt would end the same way.
    """


class ResultTooLargeError(AsyncJobsError, ValueError):
    """A handler's result is larger than the result store accepts; the job is dead-lettered with it."""


class ResultStoreError(AsyncJobsError):
    """The result store failed to record a finished job's result; the job is retried (counted), never acked without it."""


class NoResultStoreError(ConfigError):
    """The app has no result store (``amqp://`` keeps none): the message names how to pass one."""


class JobFailedError(AsyncJobsError):
    """:meth:`JobRef.result` of a job that ended without a result: dead-lettered or cancelled.

    ``status`` is the job's :class:`~asyncjobs.results.JobStatus` (``reason``, ``error``, history).
    """

    def __init__(self, message: str, status: object) -> None:
        super().__init__(message)
        self.status = status


class JobCancelledError(JobFailedError):
    """:meth:`JobRef.result` of a job that was cancelled."""


class ResultTimeoutError(AsyncJobsError, TimeoutError):
    """:meth:`JobRef.result` waited ``timeout`` seconds and the job had not finished."""

"""What a middleware sees of one processing attempt (:class:`Job`) and what it returns (:class:`Outcome`)."""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio

from asyncjobs.broker import Delivery
from asyncjobs.clock import wall_time
from asyncjobs.envelope import Envelope
from asyncjobs.errors import AsyncJobsError

if TYPE_CHECKING:
    from asyncjobs.app import App
    from asyncjobs.attempt import Attempt
    from asyncjobs.task import TaskSpec

OutcomeKind = Literal["done", "retry", "dead", "skipped", "deferred", "cancelled"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, and so how the worker settles it.

    An outcome is a value: derive a changed one with :func:`dataclasses.replace`. So one instance
    may stand for every attempt that ended alike (the worker shares one for handlers that return
    ``None``).

    * ``done``: ack. ``skipped``: ack without having run (a duplicate of a finished job).
    * ``retry``: store the next attempt, due after ``delay`` seconds.
    * ``deferred``: store the same attempt again after ``delay`` (not counted as an attempt;
      used when a duplicate must wait for another lease to end).
    * ``dead``: move to the dead letters with ``reason``.
    * ``cancelled``: ack; a user cancelled the job (``JobRef.cancel``); not retried.

    ``reason`` is a short word for metrics and logs: ``ok``, ``error``, ``timeout``, ``permanent``,
    ``max_attempts``, ``bad_arguments``, ``duplicate``...
    """

    kind: OutcomeKind
    reason: str = "ok"
    error: BaseException | None = None
    delay: float = 0.0
    result: Any = None


@dataclass(slots=True, eq=False)
class Job:
    """One attempt of one job, passed down the middleware chain; a handler gets it from :func:`current_job`.

    ``attempt`` counts every attempt so far including crash redeliveries (1 on the first run).
    ``lease_token`` is the broker's token for this delivery: a handler may use it as a fencing
    token for side effects that must not happen twice. ``state`` is free for middleware.
    :attr:`cancel_reason` tells why the worker cancelled this attempt, if it did.
    """

    envelope: Envelope
    delivery: Delivery
    spec: TaskSpec
    attempt: int
    started_at: float
    state: dict[str, Any] = field(default_factory=dict)
    _attempt: Attempt | None = field(default=None, repr=False)  # the worker's record; not for middleware

    @property
    def cancel_reason(self) -> str | None:
        """``lease_lost`` or ``shutdown`` once the worker cancelled this attempt; ``None`` otherwise.

        A timeout is not a cancellation by the worker: it surfaces as :class:`~asyncjobs.errors.JobTimeout`.
        """
        attempt = self._attempt
        return attempt.cancel_reason if attempt is not None else None

    @property
    def id(self) -> str:
        """The job id (stable across attempts)."""
        return self.envelope.id

    @property
    def task(self) -> str:
        """The task name."""
        return self.envelope.task

    @property
    def queue(self) -> str:
        """The queue the job was fetched from."""
        return self.delivery.queue

    @property
    def lease_token(self) -> str:
        """The token of this delivery's lease."""
        return self.delivery.token

    @property
    def timeout(self) -> float | None:
        """The timeout in force for this attempt (the envelope's, else the task's)."""
        timeout = self.envelope.timeout
        return timeout if timeout is not None else self.spec.options.timeout

    @property
    def max_attempts(self) -> int:
        """How many attempts this job may use in all (the envelope's ``max_attempts``, else the task's)."""
        extra = self.envelope.extra
        value = extra.get("max_attempts") if extra else None
        return value if isinstance(value, int) and value > 0 else self.spec.max_attempts

    @property
    def app(self) -> App:
        """The app the job's task is registered on (its :attr:`App.state <asyncjobs.App.state>` holds
        what the startup hooks opened)."""
        app = self.spec.app
        if app is None:
            raise AsyncJobsError(f"task {self.task!r} is not registered on an app")
        return app

    @property
    def headers(self) -> dict[str, str]:
        """The job's headers, as enqueued (``traceparent`` among them when tracing is on)."""
        return self.envelope.headers

    @property
    def key(self) -> str | None:
        """The job's idempotency key, if it has one."""
        return self.envelope.key

    @property
    def deadline(self) -> float | None:
        """When this attempt's timeout cuts it off, on anyio's clock (``anyio.current_time()``); ``None``
        without a timeout. A handler budgets its own calls with :meth:`time_left`.
        """
        attempt = self._attempt
        scope = attempt.scope if attempt is not None else None
        if scope is not None and math.isfinite(scope.deadline):
            return scope.deadline  # the attempt's own scope carries the timeout
        timeout = self.timeout
        if timeout is None:
            return None
        # The timeout starts when the attempt does (the chain's first steps only make it earlier).
        return anyio.current_time() + (self.started_at + timeout - wall_time())

    def time_left(self) -> float:
        """Seconds until :attr:`deadline` (``math.inf`` without a timeout; may be negative)."""
        deadline = self.deadline
        return math.inf if deadline is None else deadline - anyio.current_time()


CURRENT: ContextVar[Job] = ContextVar("asyncjobs_current_job")
"""Set by the worker around each handler call; read with :func:`current_job`."""


def current_job() -> Job:
    """The attempt the calling handler runs in: job id, task, queue, attempt, deadline, headers, app.

    Set by the worker around each handler call (and seen by the tasks the handler starts); outside
    a job it raises :class:`~asyncjobs.errors.AsyncJobsError`. Shared resources opened by startup
    hooks are on ``current_job().app.state``.
    """
    try:
        return CURRENT.get()
    except LookupError:
        raise AsyncJobsError("current_job() called outside a job (only a handler run by a worker has one)") from None

"""Metrics of every attempt: duration by task and outcome, time in queue, attempts used, in flight.

The worker adds this layer only when an OpenTelemetry SDK ``MeterProvider`` is configured when it
is built (``asyncjobs worker --metrics-port`` does that), so a worker without metrics pays nothing.
"""

from __future__ import annotations

from opentelemetry import metrics

from asyncjobs import instruments
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.job import Job, Outcome
from asyncjobs.middleware.chain import CallNext

_UNSET_PROVIDERS = frozenset({"_ProxyMeterProvider", "NoOpMeterProvider"})


def metrics_enabled() -> bool:
    """Whether a real (SDK) meter provider is installed globally."""
    return type(metrics.get_meter_provider()).__name__ not in _UNSET_PROVIDERS


class MetricsMiddleware:
    """Record ``asyncjobs.job.duration`` (task, outcome, reason), ``asyncjobs.job.queue_wait`` (task,
    queue), ``asyncjobs.job.attempts`` at the attempt a job ended with (task, outcome) and the
    ``asyncjobs.jobs.in_flight`` count.

    A cancelled attempt (lease lost, shutdown) is recorded with outcome ``cancelled``.
    """

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Measure the rest of the chain."""
        env = job.envelope
        task = {"task": job.task}
        due = env.not_before or env.enqueued_at
        if due:
            instruments.queue_wait.record(max(0.0, wall_time() - due), {"task": job.task, "queue": job.queue})
        instruments.in_flight.add(1, task)
        start = monotonic()
        kind, reason = "cancelled", "cancelled"
        try:
            outcome = await call_next(job)
            kind, reason = outcome.kind, outcome.reason
            return outcome
        finally:
            instruments.in_flight.add(-1, task)
            instruments.job_duration.record(monotonic() - start, {"task": job.task, "outcome": kind, "reason": reason})
            if kind in ("done", "dead"):
                instruments.retry_attempts.record(job.attempt, {"task": job.task, "outcome": kind})

"""The runtime's OpenTelemetry metric instruments, created once on the API's global meter.

With no SDK configured the API hands out no-op instruments, so recording costs next to nothing.
Names follow ``asyncjobs.<thing>``; attributes are low-cardinality (task, queue, outcome, error).

Histograms carry bucket boundaries that fit their unit (the SDK's default buckets, 0 to 10,000,
are meant for milliseconds: in seconds, ``le="5.0"`` would hold every quick job). A view the
application configures for an instrument overrides them.
"""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter("asyncjobs")

SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
"""Job durations and time in queue, in seconds: from half a millisecond to an hour."""

WAIT_BUCKETS: tuple[float, ...] = (*SECONDS_BUCKETS, 4 * 3600.0, 12 * 3600.0, 24 * 3600.0)
"""Time in queue adds hours: a backlog can last that long."""

STALL_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Event-loop stalls, in seconds (only those past the ``--stall`` threshold are recorded)."""

ATTEMPT_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 50, 100)
"""Attempt numbers: one bucket per attempt up to the usual ``max_attempts``."""

job_duration = _meter.create_histogram(
    "asyncjobs.job.duration",
    unit="s",
    description="Time a handler ran, by task and outcome",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
queue_wait = _meter.create_histogram(
    "asyncjobs.job.queue_wait",
    unit="s",
    description="Time from enqueue (or due time) to start",
    explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
)
retries = _meter.create_counter("asyncjobs.job.retries", description="Retries scheduled, by task and error class")
retry_attempts = _meter.create_histogram(
    "asyncjobs.job.attempts",
    description="Attempt number at which a job ended, by task and outcome",
    explicit_bucket_boundaries_advisory=ATTEMPT_BUCKETS,
)
dead_letters = _meter.create_counter("asyncjobs.job.dead_letters", description="Jobs dead-lettered, by reason")
dedupe_skips = _meter.create_counter("asyncjobs.dedupe.skips", description="Duplicates acked without running")
leases_extended = _meter.create_counter("asyncjobs.lease.extended", description="Lease extensions that held")
leases_lost = _meter.create_counter("asyncjobs.lease.lost", description="Leases found lost while running")
loop_stalls = _meter.create_counter("asyncjobs.loop.stalls", description="Event loop stalls past the threshold")
loop_stall_seconds = _meter.create_histogram(
    "asyncjobs.loop.stall_duration",
    unit="s",
    description="How long the event loop was blocked",
    explicit_bucket_boundaries_advisory=STALL_BUCKETS,
)
in_flight = _meter.create_up_down_counter("asyncjobs.jobs.in_flight", description="Jobs running in this worker")
cancelled = _meter.create_counter("asyncjobs.job.cancelled", description="Jobs acked as cancelled by a user, by task")
cancellation_swallowed = _meter.create_counter(
    "asyncjobs.job.cancellation_swallowed", description="Handlers that caught their own cancellation"
)

"""The runtime's OpenTelemetry metric instruments, created once on the API's global meter.

With no SDK configured the API hands out no-op instruments, so recording costs next to nothing.
Names follow ``asyncjobs.<thing>``; attributes are low-cardinality (task, queue, outcome, error).
"""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter("asyncjobs")

job_duration = _meter.create_histogram(
    "asyncjobs.job.duration", unit="s", description="Time a handler ran, by task and outcome"
)
queue_wait = _meter.create_histogram(
    "asyncjobs.job.queue_wait", unit="s", description="Time from enqueue (or due time) to start"
)
retries = _meter.create_counter("asyncjobs.job.retries", description="Retries scheduled, by task and error class")
retry_attempts = _meter.create_histogram(
    "asyncjobs.job.attempts", description="Attempt number at which a job ended, by task and outcome"
)
dead_letters = _meter.create_counter("asyncjobs.job.dead_letters", description="Jobs dead-lettered, by reason")
dedupe_skips = _meter.create_counter("asyncjobs.dedupe.skips", description="Duplicates acked without running")
leases_extended = _meter.create_counter("asyncjobs.lease.extended", description="Lease extensions that held")
leases_lost = _meter.create_counter("asyncjobs.lease.lost", description="Leases found lost while running")
loop_stalls = _meter.create_counter("asyncjobs.loop.stalls", description="Event loop stalls past the threshold")
loop_stall_seconds = _meter.create_histogram(
    "asyncjobs.loop.stall_duration", unit="s", description="How long the event loop was blocked"
)
in_flight = _meter.create_up_down_counter("asyncjobs.jobs.in_flight", description="Jobs running in this worker")
cancelled = _meter.create_counter("asyncjobs.job.cancelled", description="Jobs acked as cancelled by a user, by task")
cancellation_swallowed = _meter.create_counter(
    "asyncjobs.job.cancellation_swallowed", description="Handlers that caught their own cancellation"
)

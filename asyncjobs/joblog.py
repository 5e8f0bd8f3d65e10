"""One log line per job outcome, on the ``asyncjobs.jobs`` logger.

Each line carries the job's fields as the record attribute ``job`` (a dict: job id, task, queue,
attempt, outcome, reason, duration, trace id), which the JSON log format writes as fields of
their own. Outcomes that need attention are logged whatever the settings: a retry at WARNING,
a dead letter at ERROR, both with the last frames of the traceback. Ends that need none (done,
skipped, deferred, given back by a shutdown) are logged at INFO, which ``asyncjobs worker``
shows only with ``--log-jobs`` (it sets this logger to WARNING otherwise).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from asyncjobs.attempt import Attempt
from asyncjobs.clock import wall_time
from asyncjobs.job import Outcome

log = logging.getLogger("asyncjobs.jobs")

FRAMES = 3  # frames of the traceback a failure line carries (the last ones: where it was raised)

# settled kind -> (level, what the line says)
_LINES = {
    "done": (logging.INFO, "done"),
    "skipped": (logging.INFO, "skipped (a duplicate of a finished job)"),
    "deferred": (logging.INFO, "deferred"),
    "released": (logging.INFO, "given back (shutdown)"),
    "retried": (logging.WARNING, "failed; retried"),
    "dead": (logging.ERROR, "dead-lettered"),
    "cancelled": (logging.INFO, "cancelled (asked for with cancel())"),
}


def trace_id(attempt: Attempt) -> str | None:
    """The W3C trace id the job was enqueued under (from its ``traceparent``), if any."""
    headers: Any = attempt.envelope.headers if attempt.envelope is not None else None
    value = headers.get("traceparent") if isinstance(headers, dict) else None
    if value is None and attempt.delivery.headers:
        value = attempt.delivery.headers.get("traceparent")
    parts = value.split("-") if isinstance(value, str) else []
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else None


def fields(attempt: Attempt, outcome: str, reason: str | None = None) -> dict[str, Any]:
    """The job fields of a log line about ``attempt``."""
    started, delivery = attempt.started, attempt.delivery
    number = attempt.number or (delivery.envelope.attempt if delivery.envelope is not None else delivery.delivery_count)
    return {
        "job_id": delivery.job_id,
        "task": attempt.task,
        "queue": delivery.queue,
        "attempt": number,
        "outcome": outcome,
        "reason": reason,
        "duration": round(wall_time() - started, 6) if started else None,
        "trace_id": trace_id(attempt),
    }


def last_frames(error: BaseException, frames: int = FRAMES) -> str:
    """The error's type, message and its last ``frames`` frames, as text."""
    try:
        stack = traceback.extract_tb(error.__traceback__)[-frames:]
        where = "".join(traceback.format_list(stack)).rstrip()
        what = "".join(traceback.format_exception_only(error)).rstrip()
    except Exception as exc:  # a user's exception whose __str__ raises
        return f"<the traceback could not be formatted: {type(exc).__name__}>"
    return f"{where}\n{what}" if where else what


def settled(attempt: Attempt, kind: str, outcome: Outcome | None = None, note: str = "") -> None:
    """Log how ``attempt`` was settled: ``kind`` is one of done, skipped, deferred, released, retried, dead."""
    level, says = _LINES[kind]
    if not log.isEnabledFor(level):
        return
    job = fields(attempt, kind, outcome.reason if outcome is not None else None)
    duration = f" in {job['duration']:.3f}s" if job["duration"] is not None else ""
    message = f"{attempt.describe()} {says}{duration}"
    if outcome is not None and outcome.reason not in ("ok", None):
        message += f" ({outcome.reason})"
    if note:
        message += f": {note}"
    error = outcome.error if outcome is not None else None
    if error is not None and level >= logging.WARNING:
        message += f"\n{last_frames(error)}"
    log.log(level, "%s", message, extra={"job": job})

"""The result store: one small protocol every store implements, and what :meth:`JobRef.status` returns.

A store keeps one *record* per job id: a flat JSON object written by the worker as the job moves
on (``queued`` at enqueue, ``running`` when an attempt starts, ``retrying``, then one final
``done``/``dead``/``cancelled``), with a short history of those changes, the latest progress and,
for a ``done`` job, its encoded result. Every record expires ``ttl`` seconds after its last write.
Beside the records a store keeps *cancel marks*: ids a user asked to cancel, checked by workers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from asyncjobs.clock import wall_time
from asyncjobs.errors import ResultTooLargeError

State = Literal["queued", "scheduled", "running", "retrying", "done", "dead", "cancelled", "unknown"]
FINAL: frozenset[str] = frozenset({"done", "dead", "cancelled"})

DEFAULT_TTL = 86_400.0
"""Seconds a record kept for a task without ``keep_result`` lives (cancel marks, progress)."""
CANCEL_TTL = 7 * 86_400.0
"""Seconds a cancel mark lives: a job scheduled further ahead than this runs after all."""
HISTORY_LIMIT = 20
MARKS_LISTED = 1000
"""A heartbeat brings every live cancel mark home when there are at most this many."""
MAX_RESULT_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A snapshot of what became of one job (see :meth:`asyncjobs.JobRef.status`).

    ``state`` is one of ``queued``, ``scheduled`` (queued, due at ``next_at``), ``running``
    (``attempt`` on ``worker``), ``retrying`` (next attempt due at ``next_at``), ``done``,
    ``dead`` (``reason``, ``error``), ``cancelled`` or ``unknown`` (never seen here, or expired).
    ``cancel_requested`` is set once someone asked to cancel a job that has not ended yet.
    Times are seconds since the epoch.
    """

    id: str
    state: State
    task: str | None = None
    attempt: int = 0
    worker: str | None = None
    next_at: float | None = None
    reason: str | None = None
    error: str | None = None
    progress: float | None = None
    message: str | None = None
    updated_at: float | None = None
    cancel_requested: bool = False
    has_result: bool = False
    history: tuple[Mapping[str, Any], ...] = ()

    @property
    def finished(self) -> bool:
        """Whether the job has ended (done, dead or cancelled): its state changes no more."""
        return self.state in FINAL

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        doc = {name: getattr(self, name) for name in self.__slots__}
        doc["history"] = [dict(entry) for entry in self.history]
        return doc


def status_of(job_id: str, record: Mapping[str, Any] | None, cancel_mark: bool) -> JobStatus:
    """The :class:`JobStatus` a stored record (``None``: none) and the job's cancel mark describe."""
    if record is None:
        return JobStatus(job_id, "cancelled" if cancel_mark else "unknown", cancel_requested=cancel_mark)
    state = str(record.get("status", "unknown"))
    next_at = _number(record.get("next_at"))
    if state == "queued" and next_at is not None and next_at > wall_time():
        state = "scheduled"
    if cancel_mark and state in ("queued", "scheduled", "retrying"):
        state = "cancelled"  # it will not run again: the worker that takes it acks it as cancelled
    progress = _number(record.get("progress"))
    return JobStatus(
        id=job_id,
        state=state if state in _STATES else "unknown",  # type: ignore[arg-type]
        task=_text(record.get("task")),
        attempt=int(record.get("attempt") or 0),
        worker=_text(record.get("worker")),
        next_at=next_at,
        reason=_text(record.get("reason")),
        error=_text(record.get("error")),
        progress=progress,
        message=_text(record.get("message")),
        updated_at=_number(record.get("updated_at")),
        cancel_requested=cancel_mark and state not in FINAL,
        has_result="result" in record,
        history=tuple(e for e in record.get("history", ()) if isinstance(e, Mapping)),
    )


_STATES = frozenset({"queued", "scheduled", "running", "retrying", "done", "dead", "cancelled", "unknown"})


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def encode_result(value: Any, limit: int) -> str:
    """``value`` as JSON text; :class:`ResultTooLargeError` over ``limit`` bytes, ``TypeError`` if not JSON."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(text.encode())
    if size > limit:
        raise ResultTooLargeError(f"the result encodes to {size} bytes, over the result store's limit of {limit}")
    return text


def history_entry(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The history line of one state change: its status and the few fields that say why."""
    keep = ("status", "attempt", "worker", "reason", "next_at", "updated_at")
    return {k: fields[k] for k in keep if fields.get(k) not in (None, "")}


Write = tuple[str, Mapping[str, Any], float, bool]
"""One record write: ``(job_id, fields, ttl, final)``, as the arguments of :meth:`ResultStore.write`."""


@runtime_checkable
class ResultStore(Protocol):
    """Where job records and cancel marks live. Safe to call concurrently from many processes.

    ``fields`` are flat JSON values; a write merges them into the record (creating it), appends
    their :func:`history_entry` and sets the record's expiry to now + ``ttl``.
    """

    max_result_bytes: int
    """The largest encoded result this store accepts."""

    local: bool
    """Whether the store lives in this process (its calls cost no round trip)."""

    async def queued(self, jobs: Sequence[tuple[str, Mapping[str, Any]]], ttl: float) -> None:
        """Create the records of newly enqueued jobs; a record that exists already is left alone."""
        ...

    async def started(self, job_id: str, fields: Mapping[str, Any], ttl: float) -> bool:
        """Record that an attempt starts; ``True`` when the job has a cancel mark (it must not run)."""
        ...

    async def write(self, job_id: str, fields: Mapping[str, Any], ttl: float, *, final: bool = False) -> None:
        """Merge ``fields`` into the record; ``final`` also wakes every :meth:`wait` for this job."""
        ...

    async def write_many(self, writes: Sequence[Write]) -> None:
        """:meth:`write` of each ``(job_id, fields, ttl, final)``, in one round trip.

        The worker's outcome records go through this, many runners' at once (a group commit).
        """
        ...

    async def beat(
        self, progress: Mapping[str, Mapping[str, Any]], held: Sequence[str], ttl: float
    ) -> tuple[set[str], frozenset[str] | None]:
        """One round trip per heartbeat: write buffered ``progress``, find cancel marks.

        Returns the ids among ``held`` that have a cancel mark, and every live cancel mark when
        there are at most :data:`MARKS_LISTED` (``None`` when there are more): a worker checks the
        jobs it is about to run against that list, and asks the store only when it is ``None``.
        """
        ...

    async def cancelled(self, job_id: str) -> bool:
        """Whether ``job_id`` has a cancel mark."""
        ...

    async def cancel(self, job_id: str, ttl: float = CANCEL_TTL) -> None:
        """Set a cancel mark on ``job_id`` for ``ttl`` seconds."""
        ...

    async def get(self, job_id: str) -> tuple[dict[str, Any] | None, bool]:
        """The record of ``job_id`` (``None``: none or expired) and whether it has a cancel mark."""
        ...

    async def wait(self, job_id: str, seconds: float) -> None:
        """Return when a final write for ``job_id`` may have happened, or after ``seconds``.

        Waits without polling in a tight loop; the caller reads the record again afterwards.
        """
        ...

    async def close(self) -> None:
        """Close whatever connections the store opened. Idempotent."""
        ...

"""The in-process result store: the natural one of ``memory://`` brokers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from asyncjobs.clock import monotonic
from asyncjobs.results.store import CANCEL_TTL, HISTORY_LIMIT, MARKS_LISTED, MAX_RESULT_BYTES, Write, history_entry

MAX_RECORDS = 100_000


class MemoryResultStore:
    """Records and cancel marks in a dict of this process; :meth:`wait` waits on an event.

    :meth:`named` gives the store shared by every app of a process on the same ``memory://NAME``
    broker, so ``app.job(id)`` finds a job another app of the process enqueued. At most
    ``max_records`` records are kept: past that, expired ones are dropped, then the oldest.
    """

    local = True
    _named: dict[str, MemoryResultStore] = {}

    def __init__(self, *, max_result_bytes: int = MAX_RESULT_BYTES, max_records: int = MAX_RECORDS) -> None:
        self.max_result_bytes = max_result_bytes
        self.max_records = max_records
        self._records: dict[str, tuple[dict[str, Any], float]] = {}  # id -> (record, expires at, monotonic)
        self._cancels: dict[str, float] = {}  # id -> expires at
        self._events: dict[str, anyio.Event] = {}

    @classmethod
    def named(cls, name: str) -> MemoryResultStore:
        """The process-wide store of ``name`` (the broker's ``memory://NAME``)."""
        return cls._named.setdefault(name, cls())

    def _live(self, job_id: str) -> dict[str, Any] | None:
        found = self._records.get(job_id)
        if found is None:
            return None
        if found[1] <= monotonic():
            del self._records[job_id]
            return None
        return found[0]

    def _merge(self, job_id: str, fields: Mapping[str, Any], ttl: float) -> None:
        record = self._live(job_id) or {"history": []}
        record.update(fields)
        if "status" in fields:
            record["history"] = [*record["history"], history_entry(fields)][-HISTORY_LIMIT:]
        self._records[job_id] = (record, monotonic() + ttl)
        if len(self._records) > self.max_records:
            self._sweep()

    def _sweep(self) -> None:
        """Forget expired records, then the oldest until a tenth of the room is free (amortised)."""
        now = monotonic()
        records = {k: v for k, v in self._records.items() if v[1] > now}
        over = len(records) - self.max_records * 9 // 10
        if over > 0:  # a dict keeps the order records were created in: the first are the oldest
            for job_id in list(records)[:over]:
                del records[job_id]
        self._records = records
        self._cancels = {k: v for k, v in self._cancels.items() if v > now}

    def _mark(self, job_id: str) -> bool:
        until = self._cancels.get(job_id)
        if until is None:
            return False
        if until <= monotonic():
            del self._cancels[job_id]
            return False
        return True

    async def queued(self, jobs: Sequence[tuple[str, Mapping[str, Any]]], ttl: float) -> None:
        """See :meth:`ResultStore.queued`."""
        for job_id, fields in jobs:
            if self._live(job_id) is None:
                self._merge(job_id, fields, ttl)

    async def started(self, job_id: str, fields: Mapping[str, Any], ttl: float) -> bool:
        """See :meth:`ResultStore.started`."""
        self._merge(job_id, fields, ttl)
        return self._mark(job_id)

    async def write(self, job_id: str, fields: Mapping[str, Any], ttl: float, *, final: bool = False) -> None:
        """See :meth:`ResultStore.write`."""
        self._merge(job_id, fields, ttl)
        if final:
            self._cancels.pop(job_id, None)
            event = self._events.pop(job_id, None)
            if event is not None:
                event.set()

    async def write_many(self, writes: Sequence[Write]) -> None:
        """See :meth:`ResultStore.write_many`."""
        for job_id, fields, ttl, final in writes:
            await self.write(job_id, fields, ttl, final=final)

    async def beat(
        self, progress: Mapping[str, Mapping[str, Any]], held: Sequence[str], ttl: float
    ) -> tuple[set[str], frozenset[str] | None]:
        """See :meth:`ResultStore.beat`."""
        for job_id, fields in progress.items():
            self._merge(job_id, fields, ttl)
        marks = frozenset(self._cancels) if len(self._cancels) <= MARKS_LISTED else None
        return {job_id for job_id in held if self._mark(job_id)}, marks

    async def cancelled(self, job_id: str) -> bool:
        """See :meth:`ResultStore.cancelled`."""
        return bool(self._cancels) and self._mark(job_id)

    async def cancel(self, job_id: str, ttl: float = CANCEL_TTL) -> None:
        """See :meth:`ResultStore.cancel`."""
        self._cancels[job_id] = monotonic() + ttl

    async def get(self, job_id: str) -> tuple[dict[str, Any] | None, bool]:
        """See :meth:`ResultStore.get`."""
        record = self._live(job_id)
        return (dict(record) if record is not None else None), self._mark(job_id)

    async def wait(self, job_id: str, seconds: float) -> None:
        """See :meth:`ResultStore.wait`."""
        record = self._live(job_id)
        if record is not None and record.get("status") in ("done", "dead", "cancelled"):
            return
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = anyio.Event()
        with anyio.move_on_after(seconds):
            await event.wait()

    async def close(self) -> None:
        """Nothing to close."""

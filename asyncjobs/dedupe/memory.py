"""The in-memory dedupe store: for the embedded broker, tests, and one-process apps."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from asyncjobs.clock import wall_time
from asyncjobs.dedupe.store import HISTORY_LIMIT, Claim, DedupeRecord, Status, claimable, event


class MemoryDedupeStore:
    """Records in a dict of this process, with the same rules as the shared stores.

    Each method runs without awaiting, so it is atomic within an event loop; a lock keeps it so
    across threads. Expired records are dropped when they are next looked at.
    """

    def __init__(self) -> None:
        self._records: dict[str, DedupeRecord] = {}
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> DedupeRecord | None:
        record = self._records.get(key)
        if record is not None and record.expires_at <= now:
            del self._records[key]
            return None
        return record

    def _put(self, record: DedupeRecord, entry: dict[str, Any]) -> DedupeRecord:
        history = (*record.history[-(HISTORY_LIMIT - 1) :], entry)
        record = replace(record, history=history)
        self._records[record.key] = record
        return record

    async def claim(
        self, key: str, owner: str, *, lease_seconds: float, ttl: float, job_id: str | None = None, attempt: int = 1
    ) -> Claim:
        """See :meth:`DedupeStore.claim`."""
        with self._lock:
            now = wall_time()
            record = self._live(key, now)
            if record is not None and not claimable(record.status, record.owner, record.lease_until, now, owner):
                return Claim("done" if record.status == "done" else "running", record.lease_until, record)
            until = now + lease_seconds
            base = record or DedupeRecord(key, "running", owner, job_id, attempt, now, now, until, now + ttl)
            record = self._put(
                replace(
                    base,
                    status="running",
                    owner=owner,
                    job_id=job_id,
                    attempt=attempt,
                    updated_at=now,
                    lease_until=until,
                    expires_at=max(now + ttl, until),
                ),
                event("claimed", now, owner, job_id, attempt, lease_until=until),
            )
            return Claim("claimed", until, record)

    async def extend(self, key: str, owner: str, lease_seconds: float) -> bool:
        """See :meth:`DedupeStore.extend`."""
        with self._lock:
            now = wall_time()
            record = self._live(key, now)
            if record is None or record.status != "running" or record.owner != owner:
                return False
            until = now + lease_seconds
            self._records[key] = replace(record, lease_until=until, expires_at=max(record.expires_at, until))
            return True

    async def extend_many(self, claims: Sequence[tuple[str, str]], lease_seconds: float) -> list[bool]:
        """:meth:`extend` of every ``(key, owner)`` pair."""
        return [await self.extend(key, owner, lease_seconds) for key, owner in claims]

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        """See :meth:`DedupeStore.complete`."""
        return self._finish(key, owner, ttl, "done", "")

    async def release(self, key: str, owner: str, ttl: float, *, status: Status = "retrying", error: str = "") -> bool:
        """See :meth:`DedupeStore.release`."""
        return self._finish(key, owner, ttl, status, error)

    def _finish(self, key: str, owner: str, ttl: float, status: Status, error: str) -> bool:
        with self._lock:
            now = wall_time()
            record = self._live(key, now)
            if record is None or record.owner != owner:
                return False
            if record.status != "running":
                return record.status == status == "done"  # completing twice is fine
            self._put(
                replace(record, status=status, updated_at=now, lease_until=None, expires_at=now + ttl),
                event(status, now, owner, record.job_id, record.attempt, error=error),
            )
            return True

    async def claim_enqueue(self, key: str, ttl: float) -> bool:
        """See :meth:`DedupeStore.claim_enqueue`."""
        with self._lock:
            now = wall_time()
            record = self._live(key, now)
            if record is not None and record.status != "dead":
                return False
            base = record or DedupeRecord(key, "pending", None, None, 0, now, now, None, now + ttl)
            self._put(
                replace(base, status="pending", owner=None, updated_at=now, lease_until=None, expires_at=now + ttl),
                event("enqueued", now, None, None, 0),
            )
            return True

    async def release_enqueue(self, key: str) -> None:
        """See :meth:`DedupeStore.release_enqueue`."""
        with self._lock:
            record = self._live(key, wall_time())
            if record is not None and record.status == "pending":
                del self._records[key]

    async def get(self, key: str) -> DedupeRecord | None:
        """See :meth:`DedupeStore.get`."""
        with self._lock:
            return self._live(key, wall_time())

    async def delete(self, key: str) -> bool:
        """See :meth:`DedupeStore.delete`."""
        with self._lock:
            return self._records.pop(key, None) is not None

    async def close(self) -> None:
        """Nothing to close."""

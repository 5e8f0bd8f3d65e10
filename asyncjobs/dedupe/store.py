"""The dedupe record store: one small protocol every store implements, and its record types.

A record exists per idempotency key. Its ``status`` moves through:

* ``pending``: claimed at enqueue (a job with this key is waiting in a queue);
* ``running``: claimed by one attempt, whose ``owner`` (the delivery's lease token) holds it until
  ``lease_until`` (wall clock, the store's own clock);
* ``done``: an attempt finished; duplicates ack without running until the record expires;
* ``retrying``: an attempt failed and another will come; the next attempt can claim it;
* ``dead``: the job was dead-lettered; a new enqueue and a replay may claim it again.

Every record expires ``ttl`` seconds after its last change and keeps a bounded history of what
happened to it (event, owner, job id, attempt, time) for diagnostics (``asyncjobs dedupe show``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Status = Literal["pending", "running", "done", "retrying", "dead"]
ClaimStatus = Literal["claimed", "done", "running"]

HISTORY_LIMIT = 50
"""How many history events a record keeps (the oldest are dropped)."""


@dataclass(frozen=True, slots=True)
class DedupeRecord:
    """The state of one idempotency key. Times are seconds since the epoch."""

    key: str
    status: Status
    owner: str | None
    job_id: str | None
    attempt: int
    created_at: float
    updated_at: float
    lease_until: float | None
    expires_at: float
    history: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "key": self.key,
            "status": self.status,
            "owner": self.owner,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "lease_until": self.lease_until,
            "expires_at": self.expires_at,
            "history": [dict(event) for event in self.history],
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`DedupeStore.claim` found.

    * ``claimed``: the caller now owns the key until ``lease_until`` and may run the job.
    * ``done``: a previous attempt completed; the caller must not run it again.
    * ``running``: another owner holds a live claim until ``lease_until``; try again after it.
    """

    status: ClaimStatus
    lease_until: float | None = None
    record: DedupeRecord | None = None


@runtime_checkable
class DedupeStore(Protocol):
    """Where idempotency records live. Every method is safe to call concurrently from many workers.

    ``owner`` is an opaque string naming one attempt (the worker passes the delivery's lease
    token). Methods that change a claimed record only act when ``owner`` still holds it, so an
    attempt whose claim expired and was taken over cannot overwrite its successor's record.
    """

    async def claim(
        self, key: str, owner: str, *, lease_seconds: float, ttl: float, job_id: str | None = None, attempt: int = 1
    ) -> Claim:
        """Atomically claim ``key`` for ``owner`` for ``lease_seconds``.

        Claims (and returns ``claimed``) when there is no record, or it is ``pending``,
        ``retrying`` or ``dead``, or ``running`` under an expired lease or under ``owner`` itself.
        Returns ``done`` for a completed key and ``running`` (with the other lease's end) for a
        live claim of someone else; neither changes the record.
        """
        ...

    async def extend(self, key: str, owner: str, lease_seconds: float) -> bool:
        """Push the claim's lease to now + ``lease_seconds``; ``False`` when ``owner`` lost it.

        A store may also offer ``extend_many(claims, lease_seconds) -> list[bool]`` for a
        sequence of ``(key, owner)`` pairs in one round trip; the worker's claim keeper uses it
        when it is there (see :func:`extend_claims`).
        """
        ...

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        """Mark the key ``done`` (kept ``ttl`` seconds); ``False`` when ``owner`` does not hold it.

        Idempotent: completing a key ``owner`` already completed returns ``True``.
        """
        ...

    async def release(self, key: str, owner: str, ttl: float, *, status: Status = "retrying", error: str = "") -> bool:
        """Give up ``owner``'s claim after a failed or cancelled attempt, leaving ``status``.

        The next attempt (or, after ``dead``, a new enqueue) can then claim the key. ``False``
        when ``owner`` does not hold it.
        """
        ...

    async def claim_enqueue(self, key: str, ttl: float) -> bool:
        """Record that a job with ``key`` is being enqueued (status ``pending``, kept ``ttl`` seconds).

        ``False`` (and nothing changed) when a record of the key is pending, running, retrying
        or done; a missing, expired or ``dead`` record is claimed.
        """
        ...

    async def release_enqueue(self, key: str) -> None:
        """Undo :meth:`claim_enqueue` when the broker did not accept the job: forget a ``pending`` record."""
        ...

    async def get(self, key: str) -> DedupeRecord | None:
        """The record of ``key`` with its history, or ``None`` when there is none (or it expired)."""
        ...

    async def delete(self, key: str) -> bool:
        """Forget ``key`` (e.g. to allow a deliberate re-run); ``True`` when it existed."""
        ...

    async def close(self) -> None:
        """Close whatever connections the store opened. Idempotent."""
        ...


async def extend_claims(store: DedupeStore, claims: Sequence[tuple[str, str]], lease_seconds: float) -> list[bool]:
    """Extend every ``(key, owner)`` claim by ``lease_seconds``: one ``extend_many`` call when the store has it."""
    many = getattr(store, "extend_many", None)
    if many is not None:
        return list(await many(claims, lease_seconds))
    return [await store.extend(key, owner, lease_seconds) for key, owner in claims]


def claimable(status: str, owner: str | None, lease_until: float | None, now: float, caller: str) -> bool:
    """The claim rule shared by every store (the SQL and Lua stores spell it out the same way)."""
    if status == "running":
        return owner == caller or lease_until is None or lease_until <= now
    return status != "done"


def key_for(task: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> str:
    """A deterministic idempotency key for a call: ``TASK:`` and a SHA-256 of its JSON arguments.

    Keyword order does not matter; arguments must be JSON-serialisable (as job arguments are).
    """
    doc = json.dumps([list(args), dict(kwargs or {})], sort_keys=True, separators=(",", ":"), default=str)
    return f"{task}:{hashlib.sha256(doc.encode()).hexdigest()[:32]}"


def event(name: str, at: float, owner: str | None, job_id: str | None, attempt: int, **more: Any) -> dict[str, Any]:
    """One history entry."""
    entry: dict[str, Any] = {"event": name, "at": at, "owner": owner, "job_id": job_id, "attempt": attempt}
    entry.update({k: v for k, v in more.items() if v not in (None, "")})
    return entry


@dataclass(frozen=True, slots=True)
class ActiveClaim:
    """The claim the running attempt holds (see :func:`current_claim`)."""

    store: DedupeStore
    key: str
    owner: str
    ttl: float


_current: ContextVar[ActiveClaim | None] = ContextVar("asyncjobs_dedupe_claim", default=None)


def current_claim() -> ActiveClaim | None:
    """The dedupe claim of the attempt running in this task, or ``None`` outside a claimed job.

    A handler passes it (implicitly, through ``PostgresDedupeStore.transaction()``) to record
    its key in the same transaction as its side effect.
    """
    return _current.get()


def set_current_claim(claim: ActiveClaim | None) -> Token[ActiveClaim | None]:
    """Make ``claim`` the current one (the dedupe middleware does this around the handler)."""
    return _current.set(claim)


def reset_current_claim(token: Token[ActiveClaim | None]) -> None:
    """Undo :func:`set_current_claim`."""
    _current.reset(token)

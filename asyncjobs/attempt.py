"""One delivery in a worker's hands: its lease, and the one cancel scope of the attempt that runs it.

An :class:`Attempt` is the single owner of everything the worker knows about one delivery from
the moment it is fetched until it is settled: the lease's last confirmed deadline, the cancel
scope the whole middleware chain runs in, and *why* that scope was cancelled. Timeouts have a
scope of their own inside it (opened by the timeout middleware; the deadline lives on that
scope); the reasons the *worker* stops an attempt are kept here:

* ``lease_lost``: the broker no longer holds the lease for this worker. The job may already run
  elsewhere: the handler is cancelled at once and the delivery is never acked here.
* ``shutdown``: the drain deadline of a shutdown passed (or a second stop came). The job is
  given back to the broker without using up an attempt, unless it returned an outcome first.
* ``cancelled``: a user cancelled the job (a cancel mark in the result store). It is acked with
  outcome ``cancelled``, not retried, unless it returned an outcome first.

A delivery moves through ``buffered`` (fetched, not started), ``running`` and ``settling``
(the outcome is known and being carried out), then is forgotten. Nothing else of the worker
keeps a copy of these facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import anyio

from asyncjobs.broker import Delivery
from asyncjobs.envelope import Envelope

CancelReason = Literal["lease_lost", "shutdown", "cancelled"]
_RANK = {None: 0, "shutdown": 1, "cancelled": 2, "lease_lost": 3}  # a stronger reason overrides a weaker
Phase = Literal["buffered", "running", "settling"]


@dataclass(slots=True, eq=False)
class Attempt:
    """The worker's record of one leased delivery and the attempt that runs it.

    ``confirmed_until`` is the monotonic time up to which the broker last confirmed the lease.
    ``task`` and ``number`` (the attempt number, 1 on the first run) are known once the body is
    decoded; ``envelope`` is the decoded job (``None`` until then, or when it does not decode).
    ``started`` is the wall time at which a runner took it. ``scope`` is the cancel scope it runs
    in, lent by its runner while it runs (a runner keeps one scope for attempt after attempt and
    opens a new one only after a cancellation: a scope cannot be used again once cancelled).
    """

    delivery: Delivery
    confirmed_until: float
    phase: Phase = "buffered"
    task: str = "?"
    number: int = 0
    envelope: Envelope | None = None
    started: float = 0.0
    cancel_reason: CancelReason | None = None
    scope: anyio.CancelScope | None = field(default=None, repr=False)

    @property
    def lost(self) -> bool:
        """Whether the lease was lost: this delivery must not be settled here."""
        return self.cancel_reason == "lease_lost"

    def describe(self) -> str:
        """``job ID (task NAME, attempt N)`` for log lines."""
        number = self.number or self.delivery.delivery_count
        return f"job {self.delivery.job_id} (task {self.task}, attempt {number})"

    def cancel(self, reason: CancelReason) -> None:
        """Stop this attempt for ``reason``: a lost lease overrides a cancel, which overrides a shutdown.

        A running attempt's scope is cancelled at once. An attempt still buffered never starts its
        handler (the runner looks at the reason first); one already settling is settled as it
        ended, with the reason noted (a lost lease is not acked).
        """
        if _RANK[reason] > _RANK[self.cancel_reason]:
            self.cancel_reason = reason
        if self.phase == "running" and self.scope is not None:
            self.scope.cancel()

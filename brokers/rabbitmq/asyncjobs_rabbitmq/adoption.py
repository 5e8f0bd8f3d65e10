"""Which deliveries a consumer holds, and how a closed channel is bridged without running a job twice.

RabbitMQ has no per-message visibility timeout: a lease is the channel that holds the delivery.
Two things outlive a channel that closed:

* **Adoption.** When the server closes a channel because an ack is late (``consumer_timeout``,
  always possible before 3.11.15, which has only the global setting), its deliveries stay held for
  one lease length; a redelivery of the same job (same body) that comes back to this consumer in
  that time is *adopted* as the running job's new lease instead of being run again. A job that
  finishes while it waits is acked when its redelivery comes.
* **Lost acks.** An ack written just before its channel closed may never have been read; the
  last acks sent are remembered (at most ``limit``: an unread ack still takes a prefetch slot, so
  no more than the prefetch can be unread), and a redelivery of one of them is acked, not run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque

from aiormq.abc import AbstractChannel, DeliveredMessage

from asyncjobs.broker import Delivery
from asyncjobs.clock import monotonic
from asyncjobs_rabbitmq import wire
from asyncjobs_rabbitmq.leases import Lease, closed_by_consumer_timeout, redelivered

log = logging.getLogger(__name__)


class Adoption:
    """The held deliveries of one consumer by job id, with adoption and lost-ack memory (see the module doc)."""

    def __init__(self, lease_seconds: float, limit: int) -> None:
        self._lease = lease_seconds
        self._held: dict[str, list[Delivery]] = {}  # job id -> handed out, not settled
        self._acked_early: list[Delivery] = []  # finished while waiting for adoption
        self._sent: dict[str, tuple[bytes, int, AbstractChannel, int]] = {}  # job id -> body, copy, channel, seq
        self._order: deque[tuple[str, int]] = deque()
        self._limit = limit
        self._serial = itertools.count(1)

    # -- held deliveries -------------------------------------------------------------------------

    def hold(self, delivery: Delivery) -> None:
        """``delivery`` was handed out."""
        self._held.setdefault(delivery.job_id or "", []).append(delivery)

    def forget(self, delivery: Delivery) -> None:
        """``delivery`` is settled or lost: no longer held."""
        held = self._held.get(delivery.job_id or "")
        if held is not None:
            with contextlib.suppress(ValueError):
                held.remove(delivery)
            if not held:
                del self._held[delivery.job_id or ""]

    def holds(self, delivery: Delivery) -> bool:
        """Whether the lease still holds: not settled, and its channel open or waiting for adoption."""
        lease: Lease = delivery.handle
        if lease.settled:
            return False
        if not lease.channel.is_closed:
            return True
        if closed_by_consumer_timeout(lease.channel):
            now = monotonic()
            if lease.orphaned_at is None:
                lease.orphaned_at = now
                log.warning(
                    "job %s: RabbitMQ closed its channel (consumer_timeout); keeping it running for %.0fs "
                    "while waiting for the redelivery to adopt",
                    delivery.job_id,
                    self._lease,
                )
            if now - lease.orphaned_at < self._lease:
                return True
        self.forget(delivery)
        return False

    def held_in(self, queue: str) -> int:
        """Deliveries of ``queue`` handed out and not settled."""
        return sum(1 for ds in self._held.values() for d in ds if d.queue == queue and not d.handle.settled)

    def take_all(self) -> list[Delivery]:
        """Every held delivery; none is held afterwards."""
        held = [d for ds in self._held.values() for d in ds]
        self._held.clear()
        self._acked_early.clear()
        return held

    # -- adoption --------------------------------------------------------------------------------

    def orphan_of(self, message: DeliveredMessage) -> Delivery | None:
        """The running delivery whose channel closed and whose redelivery ``message`` is, if any."""
        for delivery in self._held.get(wire.job_id_of(message) or "", ()):
            lease: Lease = delivery.handle
            if lease.channel.is_closed and not lease.settled and delivery.body == message.body:
                return delivery
        return None

    def adopt(self, delivery: Delivery, message: DeliveredMessage, token: str) -> Lease | None:
        """Make ``message`` the lease of ``delivery``; returns that lease when it must be acked now."""
        old: Lease = delivery.handle
        delivery.handle = lease = Lease(message, old.names, old.prior)
        delivery.token = token
        log.warning(
            "job %s came back after its channel closed while it still runs here: adopted as its lease, not run again",
            delivery.job_id,
        )
        if not old.ack_on_adopt:
            return None
        self.forget(delivery)  # it finished while waiting for the redelivery
        lease.settled = True
        return lease

    def ack_when_adopted(self, delivery: Delivery) -> bool:
        """Its channel is closed: ack the redelivery when it comes back here, if the lease still holds.

        A lease marked settled for an ack that then could not go out is held again first.
        """
        lease: Lease = delivery.handle
        if lease.settled:
            lease.settled = False
            self.hold(delivery)
            if not self.holds(delivery):
                return False
        lease.ack_on_adopt = True
        self._acked_early.append(delivery)
        return True

    def prune(self) -> None:
        """Forget the finished ones whose redelivery did not come back in time."""
        if self._acked_early:
            self._acked_early = [d for d in self._acked_early if self.holds(d)]

    # -- lost acks -------------------------------------------------------------------------------

    def sent(self, lease: Lease) -> None:
        """An ack of ``lease`` went out: remember it until enough later ones went out that it must have been read."""
        job_id = wire.job_id_of(lease.message)
        if job_id is None:
            return
        seq = next(self._serial)
        self._sent[job_id] = (lease.message.body, wire.copy_of(wire.headers_of(lease.message)), lease.channel, seq)
        self._order.append((job_id, seq))
        while len(self._order) > self._limit:
            old, old_seq = self._order.popleft()
            if self._sent.get(old, (b"", 0, None, 0))[3] == old_seq:
                del self._sent[old]

    def ack_was_lost(self, message: DeliveredMessage) -> bool:
        """Whether ``message`` is the redelivery of a job acked on a channel that closed before reading the ack."""
        job_id = wire.job_id_of(message)
        if job_id is None or not (redelivered(message) or wire.server_count_of(wire.headers_of(message))):
            return False
        sent = self._sent.get(job_id)
        if sent is None:
            return False
        body, copy, channel, _ = sent
        return channel.is_closed and body == message.body and copy == wire.copy_of(wire.headers_of(message))

    def sizes(self) -> dict[str, int]:
        """How many entries each structure holds (for tests and debugging: all bounded)."""
        return {"held": len(self._held), "acked_early": len(self._acked_early), "sent": len(self._sent)}

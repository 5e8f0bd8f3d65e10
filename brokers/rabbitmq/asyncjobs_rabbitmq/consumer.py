"""The consuming side: leases are deliveries on one AMQP channel.

RabbitMQ has no per-message visibility timeout: an unacked delivery stays with its channel until
it is acked or the channel closes (worker crash, connection loss, ``consumer_timeout``); then the
server requeues it with its redelivery count raised. So a lease here is *the channel owning the
delivery*: it holds while that channel is open, ``extend`` costs no round trip, and a delivery of
a closed channel is never acked (the server already gave it back). :mod:`~asyncjobs_rabbitmq.adoption`
bridges the closes that must not run a job twice.

Every way out of a delivery ends in exactly one of: acked; nacked back to its queue (counted as a
delivery); re-published (confirmed) then acked; or its channel is gone and the server delivers it
again. An ack counts as done only once a round trip on its channel came back after it (so an ack
written into a connection the server already dropped is not taken for done), and a channel is
closed only after its last acks had time to reach a quorum queue (see :data:`SETTLE_GRACE`).
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence

import anyio
from aiormq.abc import AbstractChannel, DeliveredMessage

from asyncjobs.broker import DeadLetterInfo, Delivery
from asyncjobs.clock import monotonic
from asyncjobs.errors import BrokerError
from asyncjobs_rabbitmq import wire
from asyncjobs_rabbitmq.adoption import Adoption
from asyncjobs_rabbitmq.inbox import Inbox
from asyncjobs_rabbitmq.leases import AckWindow, Lease, Move, earlier_deliveries, redelivered
from asyncjobs_rabbitmq.link import Link
from asyncjobs_rabbitmq.publisher import Outgoing
from asyncjobs_rabbitmq.subscription import CLOSED, Subscription
from asyncjobs_rabbitmq.topology import bucket_for

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0
REPUBLISH_TIMEOUT = 10.0
"""Seconds a re-publish (give-back, move to a bucket, classic count) waits for its confirms, shielded.

Until the confirms come, the copies may or may not be stored: giving up then and nacking the
originals runs every job whose copy was stored twice. So this is a bound for a server that is
gone, not a punctuality target: a quorum queue on a loaded host can take seconds to confirm."""
SETTLE_GRACE = 0.3
"""Seconds a channel stays open after its last ack before it is closed. A quorum queue's channel may
stash settlements while many are in flight and drops the stash when it closes: the job would come
back although its ack was sent (and its re-published copy exists)."""


class RabbitConsumer:
    """Leases jobs of some queues to one worker over one channel (prefetch per queue)."""

    comes_back = (
        "RabbitMQ delivers it again once it is nacked or its channel closes "
        "(when this worker stops, at the latest), not when a lease ends"
    )
    """How a delivery this worker could not settle comes back (for the worker's logs)."""

    def __init__(self, link: Link, queues: Sequence[str], prefetch: int, lease_seconds: float) -> None:
        self._link = link
        self._queues = list(queues)
        self._subscription = Subscription(link, queues, prefetch, self._arrive)
        self.inbox = Inbox()
        self.adoption = Adoption(lease_seconds, max(64, 2 * prefetch * len(self._queues)))
        self._windows: dict[AbstractChannel, AckWindow] = {}
        self._uid = uuid.uuid4().hex[:8]
        self._serial = itertools.count(1)
        self._closed = False
        self._last_ack = 0.0

    async def start(self) -> None:
        """Declare the queues, open the channel, subscribe, and report to the broker's stats."""
        await self._subscription.start()
        self._link.attach(self)

    def counts(self, queue: str) -> tuple[int, int, int]:
        """Messages of ``queue`` this consumer holds: buffered ready, buffered early (scheduled), handed out."""
        ready, scheduled = self.inbox.counts(queue)
        return ready, scheduled, self.adoption.held_in(queue)

    def window(self, channel: AbstractChannel) -> AckWindow:
        """The ack window of ``channel`` (a new channel drops the windows of closed ones)."""
        window = self._windows.get(channel)
        if window is None:
            self._windows = {c: w for c, w in self._windows.items() if not c.is_closed}
            window = self._windows[channel] = AckWindow()
        return window

    def _token(self, message: DeliveredMessage) -> str:
        return f"{self._uid}.{id(message.channel):x}.{message.delivery_tag}.{next(self._serial)}"

    async def _arrive(self, queue: str, message: DeliveredMessage) -> None:
        """A message came in: adopt it if it is a running job's redelivery, else buffer it for fetch."""
        self.window(message.channel).arrived(message.delivery_tag or 0)
        orphan = self.adoption.orphan_of(message)
        if orphan is not None:
            lease = self.adoption.adopt(orphan, message, self._token(message))
            if lease is not None:
                await self._write_acks(lease.channel, [lease])
            return
        if self.adoption.ack_was_lost(message):  # it was done: ack it again instead of running it again
            log.warning(
                "job %s: its ack was lost with its channel; acking the redelivery, not running it again",
                wire.job_id_of(message),
            )
            await self._write_acks(message.channel, [Lease(message, self._subscription.names[queue], 0)])
            return
        self.inbox.put(queue, message)

    # -- fetching ------------------------------------------------------------------------------

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Hand out up to ``max_count`` deliveries, waiting up to ``wait_seconds`` for the first.

        Messages that came back from a delay bucket before their time go to the next bucket, and
        (classic queues) redelivered messages are re-published with their count recorded, here,
        before anything is handed out. An error admitting one message settles that message; the
        deliveries admitted before it are handed out all the same.
        """
        deadline = monotonic() + wait_seconds
        out: list[Delivery] = []
        self.adoption.prune()
        while not self._closed:
            await self._subscription.check()
            moves: list[Move] = []
            try:
                while len(out) < max_count and (item := self.inbox.pop()) is not None:
                    admitted = await self._admit_or_settle(*item)
                    if isinstance(admitted, Delivery):
                        out.append(admitted)
                    elif admitted is not None:
                        moves.append(admitted)
            finally:
                await self._republish(moves)
            remaining = deadline - monotonic()
            if out or remaining <= 0:
                break
            await self.inbox.wait(min(remaining, 1.0))  # 1 s: look at the subscriptions again
        return out

    async def _admit_or_settle(self, queue: str, message: DeliveredMessage) -> Delivery | Move | None:
        try:
            return await self._admit(queue, message)
        except Exception as exc:  # never strand it: back to its queue (or gone with its channel)
            lease = Lease(message, self._subscription.names[queue], earlier_deliveries(message))
            where = "nacked back to its queue" if await self._nack(lease) else "its channel is gone"
            log.error(
                "job %s: could not admit it (%s: %s); %s", wire.job_id_of(message), type(exc).__name__, exc, where
            )
            return None

    async def _admit(self, queue: str, message: DeliveredMessage) -> Delivery | Move | None:
        """A delivery to hand out, a message to re-publish elsewhere first, or nothing (held here, or its channel is gone)."""
        held_until_due = self.inbox.hold_ended(message)  # held here as long as it had left: due now
        if message.channel.is_closed:
            return None  # the server requeued it with its channel; it comes again
        names = self._subscription.names[queue]
        headers = wire.headers_of(message)
        prior = wire.prior_of(headers)
        server_count = wire.server_count_of(headers)
        if server_count is None and redelivered(message):  # classic: count it in a header
            return Lease(message, names, prior), names.work, prior + 1
        prior += server_count or 0
        remaining = None if held_until_due else wire.remaining_of(headers)
        if remaining is not None and remaining > 0:  # early (back from a bucket, or a short delay)
            ms = bucket_for(remaining)
            if ms is not None:
                try:
                    return Lease(message, names, prior), await self._link.bucket(queue, ms), prior
                except Exception as exc:
                    log.error(
                        "job %s: no delay bucket of %d ms (%s); holding it here until it is due",
                        wire.job_id_of(message),
                        ms,
                        exc,
                    )
            self.inbox.hold(remaining, queue, message)  # due within the smallest bucket: hold it here
            return None
        delivery = Delivery(
            queue=queue,
            job_id=wire.job_id_of(message),
            body=message.body,
            token=self._token(message),
            delivery_count=prior + 1,
            handle=Lease(message, names, prior),
            headers=wire.trace_headers_of(headers),
        )
        self.adoption.hold(delivery)
        return delivery

    async def _republish(self, moves: Sequence[Move]) -> None:
        """Re-publish deliveries with their counts (confirmed, one batch), then ack them.

        If the publish fails they are nacked back to the queue instead (a redelivery). Publish and
        acks are one step that a cancellation (a fetch or a shutdown cut short) cannot split: copies
        stored without their originals acked would be duplicates. A publish not confirmed within
        :data:`REPUBLISH_TIMEOUT` nacks the originals (if the copies were stored, those jobs run twice).
        """
        if not moves:
            return
        outgoing: list[Outgoing] = []
        for lease, routing_key, prior in moves:
            message = lease.message
            headers = wire.carried_headers(wire.headers_of(message), prior)
            outgoing.append((routing_key, message.body, wire.properties(message.header.properties.message_id, headers)))
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(REPUBLISH_TIMEOUT):
                    await self._link.publish(outgoing)
            except Exception as exc:  # (a timeout too: copies may have been stored, and may run twice)
                log.error("could not re-publish %d jobs (%r); nacking them back to their queue", len(moves), exc)
                for lease, _, _ in moves:
                    await self._nack(lease)
                return
            by_channel: dict[AbstractChannel, list[Lease]] = {}
            for lease, _, _ in moves:
                lease.settled = True
                by_channel.setdefault(lease.channel, []).append(lease)
            for channel, leases in by_channel.items():
                await self._write_acks(channel, leases)

    # -- leases --------------------------------------------------------------------------------

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """``True`` while each delivery's channel is open (no round trip: leases live with channels)."""
        return [self.adoption.holds(d) for d in deliveries]

    async def _write_acks(self, channel: AbstractChannel, leases: Sequence[Lease]) -> bool:
        """Write acks of ``leases`` on ``channel`` (a finished run as one ``multiple`` frame); ``False`` if it is closed."""
        last, singles = self.window(channel).settle([lease.tag for lease in leases])
        try:
            if last is not None:
                await channel.basic_ack(last, multiple=True, wait=False)
            for tag in singles:
                await channel.basic_ack(tag, wait=False)
        except CLOSED:
            return False
        self._last_ack = monotonic()
        for lease in leases:
            self.adoption.sent(lease)
        return True

    async def _carried(self, channel: AbstractChannel, leases: Sequence[Lease]) -> bool:
        """Ack ``leases`` and wait for a round trip on ``channel``: ``True`` once the server has read the acks."""
        return await self._write_acks(channel, leases) and await self._subscription.confirm(channel)

    async def _nack(self, lease: Lease) -> bool:
        """Back to its queue now (counted as a delivery); ``False`` if its channel is gone (the server requeued it)."""
        lease.settled = True
        try:
            await lease.channel.basic_nack(lease.tag, requeue=True, wait=False)
        except CLOSED:
            return False
        self.window(lease.channel).sent([lease.tag])
        return True

    async def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Ack deliveries on their channels; ``True`` once a round trip on the channel came back after the ack.

        A delivery named twice counts once (the second is ``False``). When the channel closes
        before the round trip, the ack may or may not have been read: ``False`` (the job may run
        again), unless the server closed it for ``consumer_timeout`` (acked when adopted).
        """
        results: list[bool] = [False] * len(deliveries)
        by_channel: dict[AbstractChannel, list[int]] = {}
        for index, delivery in enumerate(deliveries):
            lease: Lease = delivery.handle
            if not self.adoption.holds(delivery):
                continue
            if lease.channel.is_closed:  # waiting for adoption: ack the redelivery when it comes
                results[index] = self.adoption.ack_when_adopted(delivery)
                continue
            lease.settled = True
            self.adoption.forget(delivery)
            by_channel.setdefault(lease.channel, []).append(index)
        for channel, indexes in by_channel.items():
            carried = await self._carried(channel, [deliveries[i].handle for i in indexes])
            for i in indexes:
                results[i] = carried or self.adoption.ack_when_adopted(deliveries[i])
        return results

    async def _replace(self, delivery: Delivery, outgoing: Outgoing, what: str) -> bool:
        """Store ``outgoing`` (confirmed), then ack ``delivery``: a crash in between duplicates, never loses."""
        lease: Lease = delivery.handle
        try:
            await self._link.publish([outgoing])
        except Exception as exc:
            self.adoption.forget(delivery)
            where = "nacked back to its queue" if await self._nack(lease) else "its channel is gone"
            raise BrokerError(f"{what} failed ({exc}); {where}: RabbitMQ delivers it again now") from exc
        if lease.channel.is_closed:  # waiting for adoption: ack the redelivery when it comes
            self.adoption.ack_when_adopted(delivery)
            return True
        lease.settled = True
        self.adoption.forget(delivery)
        if not await self._carried(lease.channel, [lease]):  # the old body may come back: acked if adopted here
            self.adoption.ack_when_adopted(delivery)
        return True

    async def retry(self, delivery: Delivery, body: bytes, not_before: float | None) -> bool:
        """Publish the next attempt (into a delay bucket when due later), confirmed, then ack this one.

        When the bucket cannot be declared, the next attempt goes to the work queue with its due
        time, and the consumer that receives it holds it until then.
        """
        if not self.adoption.holds(delivery):
            return False
        try:
            key = await self._link.route(delivery.queue, not_before)
        except Exception as exc:
            log.error("job %s: no delay bucket for its retry (%s); sent to the work queue", delivery.job_id, exc)
            key = delivery.handle.names.work
        message: Outgoing = (key, body, wire.properties(delivery.job_id, wire.due_headers(not_before)))
        return await self._replace(delivery, message, "storing the retry")

    async def dead_letter(self, delivery: Delivery, info: DeadLetterInfo) -> bool:
        """Publish the body with ``info`` to ``<queue>.dead`` (confirmed), then ack the original."""
        if not self.adoption.holds(delivery):
            return False
        lease: Lease = delivery.handle
        dead_id = delivery.job_id or uuid.uuid4().hex
        message: Outgoing = (lease.names.dead, delivery.body, wire.properties(dead_id, wire.dead_headers(info)))
        return await self._replace(delivery, message, "dead-lettering")

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back without counting a delivery: re-publish (confirmed), then ack. Each once."""
        leases: list[Lease] = []
        for delivery in deliveries:
            lease: Lease = delivery.handle
            if self.adoption.holds(delivery) and not lease.channel.is_closed:
                leases.append(lease)
            lease.settled = True
            self.adoption.forget(delivery)
        await self._republish([(lease, lease.names.work, lease.prior) for lease in leases])

    async def close(self) -> None:
        """Stop consuming, give back what is held or buffered, close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.inbox.wake()
        self._link.detach(self)
        channel = self._subscription.channel
        if channel is None:
            return
        with anyio.move_on_after(CLOSE_TIMEOUT):  # a server that is down cannot hold up a shutdown
            await self._subscription.cancel()
            await anyio.sleep(0.01)  # let deliveries that came before the cancel-ok reach the buffer
            held = [d.handle for d in self.adoption.take_all() if not d.handle.settled]
            names = self._subscription.names
            buffered = [Lease(m, names[q], earlier_deliveries(m)) for q, m in self.inbox.drain()]
            leases = [lease for lease in held + buffered if not lease.channel.is_closed]
            for lease in leases:
                lease.settled = True
            await self._republish([(lease, lease.names.work, lease.prior) for lease in leases])
            await self._settle_in()  # if that fails, closing the channel gives them back
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self._subscription.close()

    async def _settle_in(self) -> None:
        """Before the channel closes: a round trip, then the rest of :data:`SETTLE_GRACE` after the last ack."""
        channel = self._subscription.channel
        if channel is None or channel.is_closed or not self._last_ack:
            return
        try:
            await self._subscription.confirm(await channel.get_underlay_channel())
        except CLOSED:
            return
        if self._link.options.queue_type == "quorum":
            await anyio.sleep(max(self._last_ack + SETTLE_GRACE - monotonic(), 0.0))

"""The consuming side: leases are deliveries on one AMQP channel.

RabbitMQ has no per-message visibility timeout: an unacked delivery stays with its channel until
it is acked or the channel closes (worker crash, connection loss, ``consumer_timeout``); then the
server requeues it with its redelivery count raised. So a lease here is *the channel owning the
delivery*: it holds while that channel is open, ``extend`` costs no round trip, and a delivery of
a closed channel is never acked (the server already gave it back).

One exception keeps a healthy long job from running twice when the server's consumer timeout is
shorter than the job (always possible before 3.11.15, which has only the global setting): when the server closes the channel because an ack is late, the deliveries
stay held for one lease length, and a redelivery of the same job that comes back to this
consumer in that time is *adopted* as the running job's new lease instead of being run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import aio_pika.abc
import aiormq
import anyio
from aiormq.abc import AbstractChannel, DeliveredMessage

from asyncjobs.broker import DeadLetterInfo, Delivery
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.errors import BrokerError
from asyncjobs_rabbitmq import wire
from asyncjobs_rabbitmq.leases import (
    AckWindow,
    Lease,
    Move,
    closed_by_consumer_timeout,
    earlier_deliveries,
    redelivered,
)
from asyncjobs_rabbitmq.topology import Names, bucket_for, consumer_arguments, work_arguments

if TYPE_CHECKING:
    from asyncjobs_rabbitmq.broker import RabbitBroker
    from asyncjobs_rabbitmq.publisher import Outgoing

log = logging.getLogger(__name__)

# A closed channel: aiormq raises ChannelInvalidStateError (a RuntimeError) once its close has begun,
# which can be before aio-pika's channel reports is_closed.
_CLOSED = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError, OSError)
CLOSE_TIMEOUT = 10.0


class RabbitConsumer:
    """Leases jobs of some queues to one worker over one channel (prefetch per queue)."""

    def __init__(self, broker: RabbitBroker, queues: list[str], prefetch: int, lease_seconds: float) -> None:
        self._broker = broker
        self._queues = queues
        self._prefetch = prefetch
        self._lease = lease_seconds
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._names: dict[str, Names] = {}
        self._inbox: deque[tuple[str, DeliveredMessage]] = deque()
        self._arrived = asyncio.Event()
        self._held: dict[str, list[Delivery]] = {}  # job id -> handed out, not settled
        self._uid = uuid.uuid4().hex[:8]
        self._serial = itertools.count(1)
        self._closed = False
        self._acked_early: list[Delivery] = []  # acked while waiting for adoption
        self._windows: dict[AbstractChannel, AckWindow] = {}
        self._waiting: list[tuple[float, int, str, DeliveredMessage]] = []  # due soon: held here until due
        # The last acks sent: an ack still unread by the server when its channel closes is lost, and
        # at most ``prefetch`` per queue can be unread (an unread ack still takes a prefetch slot).
        self._sent_acks: dict[str, tuple[bytes, int, AbstractChannel, int]] = {}  # body, copy, channel, seq
        self._sent_order: deque[tuple[str, int]] = deque()
        self._sent_limit = max(64, 2 * prefetch * len(queues))
        self._tags: dict[str, str] = {}  # queue -> consumer tag
        self._next_check = 0.0

    # -- subscription --------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare the queues, open the channel and subscribe (again after every reopen)."""
        topology = await self._broker._ready()
        for queue in self._queues:
            self._names[queue] = await topology.ensure(queue)
        channel = await self._broker.connection.channel(publisher_confirms=False)
        assert isinstance(channel, aio_pika.abc.AbstractRobustChannel)
        await channel.set_qos(prefetch_count=self._prefetch)
        self._channel = channel
        channel.reopen_callbacks.add(self._on_reopen)
        await self._subscribe()

    async def _subscribe(self, queues: Sequence[str] | None = None) -> None:
        """Consume ``queues`` (all by default) on the current channel, declaring them first."""
        assert self._channel is not None
        underlay = await self._channel.get_underlay_channel()
        topology = self._broker.topology
        for queue in self._queues if queues is None else queues:
            names = self._names[queue]

            async def on_message(message: DeliveredMessage, queue: str = queue) -> None:
                await self._arrive(queue, message)

            await underlay.queue_declare(names.work, durable=True, arguments=work_arguments(topology.options, names))
            ok = await underlay.basic_consume(
                names.work, on_message, no_ack=False, arguments=consumer_arguments(topology.options, topology.server)
            )
            self._tags[queue] = ok.consumer_tag or ""

    async def _check_subscriptions(self) -> None:
        """Consume again a queue whose consumer the server cancelled (the queue was deleted), once a second."""
        now = monotonic()
        channel = self._channel
        if now < self._next_check or channel is None or channel.is_closed:
            return
        self._next_check = now + 1.0
        consumers = cast(aiormq.Channel, await channel.get_underlay_channel()).consumers
        lost = [queue for queue in self._queues if self._tags.get(queue) not in consumers]
        if lost:
            log.warning("RabbitMQ cancelled the consumer of %s (queue deleted?); consuming again", ",".join(lost))
            try:
                await self._subscribe(lost)
            except _CLOSED as exc:
                log.error("could not consume %s again (%s); retrying", ",".join(lost), exc)

    async def _on_reopen(self, *_: object) -> None:
        if self._closed:
            return
        log.warning("consumer channel reopened after it was closed; subscribing again to %s", ",".join(self._queues))
        await self._subscribe()

    def _window(self, channel: AbstractChannel) -> AckWindow:
        window = self._windows.get(channel)
        if window is None:  # a new channel: the windows of closed ones are of no use any more
            self._windows = {c: w for c, w in self._windows.items() if not c.is_closed}
            window = self._windows[channel] = AckWindow()
        return window

    async def _arrive(self, queue: str, message: DeliveredMessage) -> None:
        """A message came in: adopt it if it is a running job's redelivery, else queue it for fetch."""
        self._window(message.channel).order.append(message.delivery_tag or 0)
        job_id = wire.job_id_of(message)
        for delivery in self._held.get(job_id or "", ()):
            lease: Lease = delivery.handle
            if lease.channel.is_closed and not lease.settled and delivery.body == message.body:
                await self._adopt(delivery, lease, message)
                return
        if self._ack_was_lost(job_id, message):  # it was done: ack it again instead of running it again
            log.warning(
                "job %s: its ack was lost with its channel; acking the redelivery, not running it again", job_id
            )
            await self._ack(Lease(message, self._names[queue], 0))
            return
        self._inbox.append((queue, message))
        self._arrived.set()

    async def _adopt(self, delivery: Delivery, lease: Lease, message: DeliveredMessage) -> None:
        delivery.handle = Lease(message, lease.names, lease.prior)
        delivery.token = self._token(message)
        log.warning(
            "job %s came back after its channel closed while it still runs here: adopted as its lease, not run again",
            delivery.job_id,
        )
        if lease.ack_on_adopt:  # it finished while waiting for the redelivery
            self._forget(delivery)
            delivery.handle.settled = True
            await self._ack(delivery.handle)

    def _token(self, message: DeliveredMessage) -> str:
        return f"{self._uid}.{id(message.channel):x}.{message.delivery_tag}.{next(self._serial)}"

    def local_counts(self, queue: str) -> tuple[int, int, int]:
        """Messages of ``queue`` this consumer holds: buffered ready, buffered early (scheduled), handed out."""
        ready = scheduled = 0
        now = wall_time()
        scheduled += sum(1 for _, _, name, m in self._waiting if name == queue and not m.channel.is_closed)
        for name, message in self._inbox:
            if name != queue or message.channel.is_closed:
                continue
            due = wire.due_of(wire.headers_of(message))
            if due is not None and due > now:
                scheduled += 1
            else:
                ready += 1
        held = sum(1 for ds in self._held.values() for d in ds if d.queue == queue and not d.handle.settled)
        return ready, scheduled, held

    # -- fetching ------------------------------------------------------------------------------

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Hand out up to ``max_count`` deliveries, waiting up to ``wait_seconds`` for the first.

        Messages that came back from a delay bucket before their time go to the next bucket, and
        (classic queues) redelivered messages are re-published with their count recorded, here,
        before anything is handed out.
        """
        deadline = monotonic() + wait_seconds
        out: list[Delivery] = []
        if self._acked_early:  # forget those whose redelivery did not come back in time
            self._acked_early = [d for d in self._acked_early if self._holds(d)]
        while not self._closed:
            await self._check_subscriptions()
            self._release_due()
            moves: list[Move] = []
            while self._inbox and len(out) < max_count:
                queue, message = self._inbox.popleft()
                admitted = await self._admit(queue, message)
                if isinstance(admitted, Delivery):
                    out.append(admitted)
                elif admitted is not None:
                    moves.append(admitted)
            await self._republish(moves)
            remaining = deadline - monotonic()
            if out or remaining <= 0:
                break
            self._arrived.clear()
            if not self._inbox:
                if self._waiting:
                    remaining = min(remaining, max(self._waiting[0][0] - wall_time(), 0.0))
                with anyio.move_on_after(min(remaining, 1.0)):  # 1 s: look at the subscriptions again
                    await self._arrived.wait()
        return out

    def _release_due(self) -> None:
        """Jobs held until their due time that are due now go to the front of the buffer."""
        now = wall_time()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, queue, message = heapq.heappop(self._waiting)
            self._inbox.appendleft((queue, message))

    async def _admit(self, queue: str, message: DeliveredMessage) -> Delivery | Move | None:
        """A delivery to hand out, a message to re-publish elsewhere first, or nothing (its channel is gone)."""
        if message.channel.is_closed:
            return None  # the server requeued it with its channel; it comes again
        names = self._names[queue]
        headers = wire.headers_of(message)
        prior = wire.prior_of(headers)
        server_count = wire.server_count_of(headers)
        if server_count is None and redelivered(message):  # classic: count it in a header
            return Lease(message, names, prior), names.work, prior + 1
        prior += server_count or 0
        due = wire.due_of(headers)
        if due is not None and due > wall_time():  # early (back from a bucket, or a short delay)
            ms = bucket_for(due - wall_time())
            if ms is None:  # due within the smallest bucket: hold it here until then
                heapq.heappush(self._waiting, (due, next(self._serial), queue, message))
                return None
            return Lease(message, names, prior), await self._broker.topology.ensure_bucket(queue, ms), prior
        delivery = Delivery(
            queue=queue,
            job_id=wire.job_id_of(message),
            body=message.body,
            token=self._token(message),
            delivery_count=prior + 1,
            handle=Lease(message, names, prior),
            headers=wire.trace_headers_of(wire.headers_of(message)),
        )
        self._held.setdefault(delivery.job_id or "", []).append(delivery)
        return delivery

    async def _republish(self, moves: Sequence[Move]) -> bool:
        """Re-publish deliveries with their counts (confirmed, one batch), then ack them.

        If the publish fails they are nacked back to the queue instead (a redelivery).
        """
        if not moves:
            return True
        outgoing: list[Outgoing] = []
        for lease, routing_key, prior in moves:
            message = lease.message
            headers = wire.carried_headers(wire.headers_of(message), prior)
            outgoing.append((routing_key, message.body, wire.properties(message.header.properties.message_id, headers)))
        try:
            await self._broker.publish(outgoing)
        except BrokerError as exc:
            log.error("could not re-publish %d jobs (%s); giving them back", len(moves), exc)
            for lease, _, _ in moves:
                await self._nack(lease)
            return False
        for lease, _, _ in moves:
            lease.settled = True
            await self._ack(lease)
        return True

    # -- leases --------------------------------------------------------------------------------

    def _holds(self, delivery: Delivery) -> bool:
        """Whether the lease still holds (its channel is open, or waiting for adoption)."""
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
        self._forget(delivery)
        return False

    def _forget(self, delivery: Delivery) -> None:
        held = self._held.get(delivery.job_id or "")
        if held is not None:
            with contextlib.suppress(ValueError):
                held.remove(delivery)
            if not held:
                del self._held[delivery.job_id or ""]

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """``True`` while each delivery's channel is open (no round trip: leases live with channels)."""
        return [self._holds(d) for d in deliveries]

    async def _ack(self, lease: Lease) -> bool:
        try:
            await lease.channel.basic_ack(lease.tag, wait=False)
        except _CLOSED:
            return False
        self._window(lease.channel).sent([lease.tag])
        self._sent(lease)
        return True

    def _sent(self, lease: Lease) -> None:
        """Remember an ack until enough later ones went out that it must have been read."""
        job_id = wire.job_id_of(lease.message)
        if job_id is None:
            return
        seq = next(self._serial)
        self._sent_acks[job_id] = (lease.message.body, wire.copy_of(wire.headers_of(lease.message)), lease.channel, seq)
        self._sent_order.append((job_id, seq))
        if len(self._sent_order) > self._sent_limit:
            old, old_seq = self._sent_order.popleft()
            if self._sent_acks.get(old, (b"", 0, None, 0))[3] == old_seq:
                del self._sent_acks[old]

    def _ack_was_lost(self, job_id: str | None, message: DeliveredMessage) -> bool:
        """Whether ``message`` is the redelivery of a job acked on a channel that closed before reading the ack."""
        if job_id is None or not (redelivered(message) or wire.server_count_of(wire.headers_of(message))):
            return False
        sent = self._sent_acks.get(job_id)
        if sent is None:
            return False
        body, copy, channel, _ = sent
        return channel.is_closed and body == message.body and copy == wire.copy_of(wire.headers_of(message))

    async def _nack(self, lease: Lease) -> None:
        lease.settled = True
        with contextlib.suppress(*_CLOSED):  # its channel is gone: the server requeued it already
            await lease.channel.basic_nack(lease.tag, requeue=True, wait=False)
            self._window(lease.channel).sent([lease.tag])

    async def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Ack deliveries on their channels: a finished run of tags with one ``multiple`` frame, others one by one.

        Frames are written without waiting (AMQP acks have no reply); ``True`` means the ack went
        out on the open channel that holds the delivery.
        """
        results: list[bool] = [False] * len(deliveries)
        by_channel: dict[AbstractChannel, list[int]] = {}
        for index, delivery in enumerate(deliveries):
            lease: Lease = delivery.handle
            if not self._holds(delivery):
                continue
            if lease.channel.is_closed:  # waiting for adoption: ack the redelivery when it comes
                results[index] = self._ack_when_adopted(delivery)
                continue
            lease.settled = True
            self._forget(delivery)
            by_channel.setdefault(lease.channel, []).append(index)
        for channel, indexes in by_channel.items():
            tags = [deliveries[i].handle.tag for i in indexes]
            last, singles = self._window(channel).settle(tags)
            try:
                if last is not None:
                    await channel.basic_ack(last, multiple=True, wait=False)
                for tag in singles:
                    await channel.basic_ack(tag, wait=False)
            except _CLOSED:  # it closed meanwhile (consumer_timeout): nothing went out on it
                for i in indexes:
                    results[i] = self._ack_when_adopted(deliveries[i])
                continue
            for i in indexes:
                results[i] = True
                self._sent(deliveries[i].handle)
        return results

    def _ack_when_adopted(self, delivery: Delivery) -> bool:
        """Its channel is closed: ack the redelivery when it comes back here, if the lease still holds.

        A lease marked settled for an ack that then could not go out is held again first.
        """
        lease: Lease = delivery.handle
        if lease.settled:
            lease.settled = False
            self._held.setdefault(delivery.job_id or "", []).append(delivery)
            if not self._holds(delivery):
                return False
        lease.ack_on_adopt = True
        self._acked_early.append(delivery)
        return True

    async def _replace(self, delivery: Delivery, outgoing: Outgoing) -> bool:
        """Store ``outgoing`` (confirmed), then ack ``delivery``: a crash in between duplicates, never loses."""
        lease: Lease = delivery.handle
        if not self._holds(delivery):
            return False
        try:
            await self._broker.publish([outgoing])
        except BrokerError:
            await self._nack(lease)
            self._forget(delivery)
            raise
        if lease.channel.is_closed:  # waiting for adoption: ack the redelivery when it comes
            self._ack_when_adopted(delivery)
            return True
        lease.settled = True
        self._forget(delivery)
        if not await self._ack(lease):  # the old body comes back: acked when adopted here, else run again
            self._ack_when_adopted(delivery)
        return True

    async def retry(self, delivery: Delivery, body: bytes, not_before: float | None) -> bool:
        """Publish the next attempt (into a delay bucket when due later), confirmed, then ack this one."""
        if not self._holds(delivery):
            return False
        key = await self._broker.route(delivery.queue, not_before)
        message: Outgoing = (key, body, wire.properties(delivery.job_id, wire.due_headers(not_before)))
        return await self._replace(delivery, message)

    async def dead_letter(self, delivery: Delivery, info: DeadLetterInfo) -> bool:
        """Publish the body with ``info`` to ``<queue>.dead`` (confirmed), then ack the original."""
        if not self._holds(delivery):
            return False
        lease: Lease = delivery.handle
        dead_id = delivery.job_id or self._broker.new_message_id()
        message: Outgoing = (lease.names.dead, delivery.body, wire.properties(dead_id, wire.dead_headers(info)))
        return await self._replace(delivery, message)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back without counting a delivery: re-publish (confirmed), then ack."""
        leases: list[Lease] = []
        for delivery in deliveries:
            if self._holds(delivery) and not delivery.handle.channel.is_closed:
                leases.append(delivery.handle)
            else:
                delivery.handle.settled = True
            self._forget(delivery)
        await self._give_back(leases)

    async def _give_back(self, leases: list[Lease]) -> None:
        await self._republish([(lease, lease.names.work, lease.prior) for lease in leases])

    async def close(self) -> None:
        """Stop consuming, give back what is held or buffered, close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._broker.consumers.discard(self)
        channel, self._channel = self._channel, None
        if channel is None:
            return
        with anyio.move_on_after(CLOSE_TIMEOUT):  # a server that is down cannot hold up a shutdown
            try:
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                for tag in list(underlay.consumers):
                    await underlay.basic_cancel(tag)
                await anyio.sleep(0.01)  # let deliveries that came before the cancel-ok reach the buffer
            except _CLOSED:
                pass
            held = [d for ds in self._held.values() for d in ds]
            self._held.clear()
            waiting = [(queue, message) for _, _, queue, message in self._waiting]
            buffered = [
                Lease(message, self._names[queue], earlier_deliveries(message))
                for queue, message in [*self._inbox, *waiting]
                if not message.channel.is_closed
            ]
            self._inbox.clear()
            self._waiting.clear()
            leases = [d.handle for d in held if not d.handle.settled and not d.handle.channel.is_closed] + buffered
            await self._give_back(leases)  # if that fails, closing the channel gives them back
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await channel.close()

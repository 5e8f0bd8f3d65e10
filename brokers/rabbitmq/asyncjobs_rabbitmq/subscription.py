"""A consumer's channel and its ``basic.consume`` per queue, made again after every reopen.

The channel is robust (aio-pika reopens it, and the connection, after a loss); every reopen
subscribes again. A queue deleted under a running app makes the server cancel its consumer: that
is noticed (once a second) and the queue is declared and consumed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import aio_pika.abc
import aiormq
from aiormq.abc import DeliveredMessage

from asyncjobs.clock import monotonic
from asyncjobs_rabbitmq.link import Link
from asyncjobs_rabbitmq.topology import Names, consumer_arguments, work_arguments

log = logging.getLogger(__name__)

# A closed channel: aiormq raises ChannelInvalidStateError (a RuntimeError) once its close has begun,
# which can be before aio-pika's channel reports is_closed.
CLOSED = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError, OSError)

CONFIRM_TIMEOUT = 10.0
"""Seconds a round trip on a channel may take before the frames before it count as not read."""

OnMessage = Callable[[str, DeliveredMessage], Awaitable[None]]


class Subscription:
    """Consumes ``queues`` on one channel with ``basic.qos(prefetch)`` per consumer (see the module doc)."""

    def __init__(self, link: Link, queues: Sequence[str], prefetch: int, on_message: OnMessage) -> None:
        self._link = link
        self._queues = list(queues)
        self._prefetch = prefetch
        self._on_message = on_message
        self.names: dict[str, Names] = {}
        self.channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._tags: dict[str, str] = {}  # queue -> consumer tag
        self._next_check = 0.0
        self._closed = False

    async def start(self) -> None:
        """Declare the queues, open the channel and consume."""
        for queue in self._queues:
            self.names[queue] = await self._link.names(queue)
        self.channel = await self._link.channel(self._prefetch)
        self.channel.reopen_callbacks.add(self._on_reopen)
        await self._subscribe()

    async def _subscribe(self, queues: Sequence[str] | None = None) -> None:
        """Consume ``queues`` (all by default) on the current channel, declaring them first."""
        assert self.channel is not None
        underlay = await self.channel.get_underlay_channel()
        options, server = self._link.options, self._link.server
        for queue in self._queues if queues is None else queues:
            names = self.names[queue]

            async def on_message(message: DeliveredMessage, queue: str = queue) -> None:
                await self._on_message(queue, message)

            await underlay.queue_declare(names.work, durable=True, arguments=work_arguments(options, names))
            ok = await underlay.basic_consume(
                names.work, on_message, no_ack=False, arguments=consumer_arguments(options, server)
            )
            self._tags[queue] = ok.consumer_tag or ""

    async def check(self) -> None:
        """Consume again a queue whose consumer the server cancelled (the queue was deleted), once a second."""
        now = monotonic()
        channel = self.channel
        if now < self._next_check or channel is None or channel.is_closed:
            return
        self._next_check = now + 1.0
        consumers = cast(aiormq.Channel, await channel.get_underlay_channel()).consumers
        lost = [queue for queue in self._queues if self._tags.get(queue) not in consumers]
        if lost:
            log.warning("RabbitMQ cancelled the consumer of %s (queue deleted?); consuming again", ",".join(lost))
            try:
                await self._subscribe(lost)
            except CLOSED as exc:
                log.error("could not consume %s again (%s); retrying", ",".join(lost), exc)

    async def _on_reopen(self, *_: object) -> None:
        if self._closed:
            return
        log.warning("consumer channel reopened after it was closed; subscribing again to %s", ",".join(self._queues))
        await self._subscribe()

    async def cancel(self) -> None:
        """Stop consuming (no new deliveries); the channel stays open for acks."""
        self._closed = True
        if self.channel is None:
            return
        try:
            underlay = cast(aiormq.Channel, await self.channel.get_underlay_channel())
            for tag in list(underlay.consumers):
                await underlay.basic_cancel(tag)
        except CLOSED:
            pass

    async def confirm(self, channel: aiormq.abc.AbstractChannel) -> bool:
        """A round trip on ``channel``: ``True`` once the server has read every frame sent on it before.

        The frame is a ``basic.qos`` with this consumer's prefetch (per consumer: it changes nothing
        for consumers already made). ``False`` when the channel is closed or closes meanwhile, or no
        answer came within :data:`CONFIRM_TIMEOUT` (the frames may or may not have been read).
        """
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            await channel.basic_qos(prefetch_count=self._prefetch, timeout=CONFIRM_TIMEOUT)
        except (*CLOSED, TimeoutError):
            return False
        except asyncio.CancelledError:  # aiormq cancels the waits of a channel that closes
            if task is None or task.cancelling() > cancelling:
                raise  # this task is being cancelled
            return False
        return not channel.is_closed

    async def close(self) -> None:
        """Close the channel (the server requeues whatever is still unacked on it)."""
        self._closed = True
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()

"""Leases on AMQP deliveries: the handle of one delivery, and the ack window of a channel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage

from asyncjobs_rabbitmq import wire
from asyncjobs_rabbitmq.topology import Names


@dataclass(slots=True, eq=False)
class Lease:
    """Broker-private handle of a :class:`Delivery`."""

    message: DeliveredMessage
    names: Names
    prior: int  # earlier unsettled deliveries of this body
    settled: bool = False
    orphaned_at: float | None = None  # when first seen on a channel closed by consumer timeout
    ack_on_adopt: bool = False

    @property
    def channel(self) -> AbstractChannel:
        """The channel that holds the delivery (the lease holds while it is open)."""
        return self.message.channel

    @property
    def tag(self) -> int:
        """The delivery tag on that channel."""
        return self.message.delivery_tag or 0


class AckWindow:
    """The unacked delivery tags of one channel in order, so a run of finished ones is acked with one frame.

    A ``multiple`` ack must name a tag that is still unacked (RabbitMQ closes the channel on an
    unknown delivery tag) and must cover only finished jobs. Only unacked tags are kept (an
    insertion-ordered dict, so a tag acked one by one behind an unfinished one is removed at once):
    the window never holds more than the channel's prefetch, whatever order jobs finish in.
    """

    __slots__ = ("unacked",)

    def __init__(self) -> None:
        self.unacked: dict[int, None] = {}  # in delivery order (tags grow)

    def arrived(self, tag: int) -> None:
        """A delivery with ``tag`` came in on the channel."""
        self.unacked[tag] = None

    def settle(self, tags: Sequence[int]) -> tuple[int | None, list[int]]:
        """Ack ``tags``: the tag of one ``multiple`` ack for the finished run at the front, and the rest.

        The caller sends both. Tags not in the window (acked already) are left out of both.
        """
        pending = {tag for tag in tags if tag in self.unacked}
        unacked, last = self.unacked, None
        while pending and unacked:
            front = next(iter(unacked))
            if front not in pending:
                break
            del unacked[front]
            pending.discard(front)
            last = front
        singles = [tag for tag in dict.fromkeys(tags) if tag in pending]
        for tag in singles:
            del unacked[tag]
        return last, singles

    def sent(self, tags: Sequence[int]) -> None:
        """``tags`` were acked or nacked one by one, outside :meth:`settle`."""
        for tag in tags:
            self.unacked.pop(tag, None)


Move = tuple[Lease, str, int]
"""A delivery to re-publish: its lease, the queue to publish to, earlier unsettled deliveries."""


def closed_by_consumer_timeout(channel: AbstractChannel) -> bool:
    """Whether the server closed ``channel`` because an ack was later than ``consumer_timeout``."""
    closing = channel.closing
    if not closing.done() or closing.cancelled():
        return False
    exc = closing.exception()
    return isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed) and "timed out" in str(exc)


def earlier_deliveries(message: DeliveredMessage) -> int:
    """Deliveries of this body before this one that ended unsettled."""
    headers = wire.headers_of(message)
    count = wire.server_count_of(headers)
    if count is None:
        count = 1 if redelivered(message) else 0
    return wire.prior_of(headers) + count


def redelivered(message: DeliveredMessage) -> bool:
    """The AMQP ``redelivered`` flag."""
    return bool(getattr(message.delivery, "redelivered", False))

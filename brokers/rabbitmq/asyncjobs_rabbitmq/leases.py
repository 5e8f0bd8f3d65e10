"""Leases on AMQP deliveries: the handle of one delivery, and the ack window of a channel."""

from __future__ import annotations

from collections import deque
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
    """The unsettled delivery tags of one channel in order, so a run of finished ones is acked with one frame."""

    __slots__ = ("done", "order")

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.done: set[int] = set()

    def settle(self, tags: Sequence[int]) -> tuple[int | None, list[int]]:
        """Mark ``tags`` settled: the last tag of the settled prefix (one ``multiple`` ack) and the rest."""
        done, order = self.done, self.order
        done.update(tags)
        last = None
        while order and order[0] in done:
            last = order.popleft()
            done.discard(last)
        return last, [t for t in tags if t in done]


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

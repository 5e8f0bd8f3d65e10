"""Publishing many messages with publisher confirms in one write.

aiormq's ``basic_publish`` sends one message per call: it takes the channel lock, queues the
frames for the writer task and waits for that message's confirm. A bulk enqueue of 1,000 jobs
then costs 1,000 tasks, 1,000 trips through the lock and 1,000 socket writes, and the client
(not RabbitMQ) sets the pace. :func:`publish_many` does what ``basic_publish`` does for every
message (the channel's next delivery tag, a confirmation future the channel settles on ack, nack
or return, the message id mapped to its tag so a ``basic.return`` finds it) for the whole batch
under one hold of the lock, and hands the writer one buffer.

It relies on the channel attributes ``basic_publish`` itself uses (``delivery_tag``,
``confirmations``, ``message_id_delivery_tag``, ``write_queue``); a channel without them is served
one ``basic_publish`` per message, as before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

Outgoing = tuple[str, bytes, spec.Basic.Properties]
"""One message to publish: routing key (queue name), body, properties."""

HEADER_FRAME_LIMIT = 64 * 1024
"""Bytes of a content header frame at most (RabbitMQ closes the connection on a frame over ``frame_max``)."""


class UnsendableError(ValueError):
    """A message whose properties cannot go out (too large, or not encodable): nothing of the batch was sent."""


def header_frame(channel: aiormq.Channel, properties: spec.Basic.Properties, body_size: int) -> bytes:
    """The content header frame of one message; :class:`UnsendableError` when it would endanger the connection."""
    try:
        encoded = frame.marshal(ContentHeader(properties=properties, body_size=body_size), channel.number)
    except (TypeError, ValueError, UnicodeError, OverflowError) as exc:
        raise UnsendableError(f"message properties cannot be encoded: {exc}") from None
    limit = min(HEADER_FRAME_LIMIT, int(channel.max_content_size) // 2)
    if len(encoded) > limit:
        raise UnsendableError(f"message headers take {len(encoded)} bytes, more than the {limit} allowed")
    return encoded


_BATCH_ATTRIBUTES = ("delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue", "lock")


def can_batch(channel: aiormq.Channel) -> bool:
    """Whether ``channel`` has what :func:`publish_many` needs (a confirming aiormq channel)."""
    return bool(channel.publisher_confirms) and all(hasattr(channel, name) for name in _BATCH_ATTRIBUTES)


def _frames(channel: aiormq.Channel, messages: Sequence[Outgoing]) -> bytes:
    """The wire bytes of every message: publish method, content header and body frames.

    The method frame depends only on the routing key, so it is encoded once per key and batch
    (encoding it is as costly as the header and body frames together).
    """
    number, size = channel.number, int(channel.max_content_size)
    methods: dict[str, bytes] = {}
    parts: list[bytes] = []
    for key, body, properties in messages:
        method = methods.get(key)
        if method is None:
            method = methods[key] = frame.marshal(
                spec.Basic.Publish(exchange="", routing_key=key, mandatory=True), number
            )
        parts.append(method)
        parts.append(header_frame(channel, properties, len(body)))
        parts.extend(frame.marshal(ContentBody(body[i : i + size]), number) for i in range(0, len(body), size))
    return b"".join(parts)


async def publish_many(channel: aiormq.Channel, messages: Sequence[Outgoing]) -> list[BaseException | Any]:
    """Publish ``messages`` (mandatory) and wait for every confirm; one result or exception per message.

    Every message needs a ``message_id`` (the channel maps a returned message back to its
    confirmation by it). Exceptions are those ``basic_publish`` gives: ``PublishError`` for a
    returned message, ``DeliveryError`` for a nack, the channel's error when it closes first.
    """
    if not can_batch(channel):
        for _, body, props in messages:
            header_frame(channel, props, len(body))
        return await asyncio.gather(
            *(
                channel.basic_publish(body, routing_key=key, properties=props, mandatory=True, wait=False)
                for key, body, props in messages
            ),
            return_exceptions=True,
        )
    ids: list[str] = []
    for _, _, props in messages:
        message_id = props.message_id or uuid.uuid4().hex  # as basic_publish does: a return is matched by id
        props.message_id = message_id
        ids.append(message_id)
    payload = ChannelFrame(payload=_frames(channel, messages), should_close=False)
    confirmations: list[asyncio.Future[Any]] = []
    async with channel.lock:  # every publisher takes it: the tags and the frames stay in step
        first = channel.delivery_tag + 1
        for tag, message_id in enumerate(ids, first):
            confirmation = channel.create_future()
            channel.confirmations[tag] = confirmation
            channel.message_id_delivery_tag[message_id] = tag
            confirmations.append(confirmation)
        channel.delivery_tag = first + len(ids) - 1
        try:
            await channel.write_queue.put(payload)  # the writer's queue is bounded: this can wait
        except BaseException:  # not written (cancelled while waiting): RabbitMQ never saw these tags
            channel.delivery_tag = first - 1
            _forget(channel, ids, first, confirmations, sent=False)
            raise
    try:
        return await asyncio.gather(*confirmations, return_exceptions=True)
    finally:
        _forget(channel, ids, first, confirmations)


def _forget(
    channel: aiormq.Channel, ids: list[str], first: int, confirmations: list[asyncio.Future[Any]], *, sent: bool = True
) -> None:
    """Drop the batch's bookkeeping: its id-to-tag entries, its tags when never sent, waits nobody has now."""
    by_id = channel.message_id_delivery_tag
    for tag, message_id in enumerate(ids, first):
        if by_id.get(message_id) == tag:
            del by_id[message_id]
        if not sent:
            channel.confirmations.pop(tag, None)
    for confirmation in confirmations:
        confirmation.cancel()  # a no-op for the settled ones; the rest are given up (timeout, cancel)

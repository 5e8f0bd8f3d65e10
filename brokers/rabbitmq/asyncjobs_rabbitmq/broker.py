"""The RabbitMQ broker: producer and admin side (enqueue, stats, dead letters)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import aio_pika
import aio_pika.abc
import aiormq
from aiormq.abc import DeliveredMessage

from asyncjobs.broker import DeadLetter, OutgoingJob, QueueStats, safe_url
from asyncjobs.envelope import peek_id
from asyncjobs.errors import BrokerConnectionError, BrokerError, ConfigError
from asyncjobs_rabbitmq import wire
from asyncjobs_rabbitmq.consumer import RabbitConsumer
from asyncjobs_rabbitmq.link import Link
from asyncjobs_rabbitmq.options import RabbitOptions
from asyncjobs_rabbitmq.publisher import Outgoing, UnsendableError, publish_many
from asyncjobs_rabbitmq.topology import BUCKETS_MS, DEAD_ARGUMENTS, Topology
from asyncjobs_rabbitmq.version import ServerInfo

log = logging.getLogger(__name__)

MAX_BROWSE = 100_000
"""Dead letters read at most by one list/get/replay/purge-by-id (browsing a queue is O(n))."""

PUBLISH_TIMEOUT = 30.0
"""Seconds an enqueue waits for its confirms (including a reconnection) before raising."""


class UnroutableError(BrokerError):
    """RabbitMQ returned messages because their queue does not exist; ``indexes`` says which."""

    def __init__(self, message: str, indexes: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.indexes = list(indexes)


class RabbitBroker:
    """A broker on RabbitMQ; one robust AMQP connection per instance (reconnects by itself).

    ``leases_expire`` is ``False``: a lease is the AMQP channel that holds the delivery, not a
    deadline (see the package README). ``supports_unique`` is ``False``: RabbitMQ cannot refuse a
    duplicate at enqueue; the runtime's enqueue guard (a record store) does it.
    """

    supports_unique = False
    leases_expire = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.options = RabbitOptions.from_url(url)
        self.server = ServerInfo()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None
        self._topology: Topology | None = None
        self._connect_lock = asyncio.Lock()
        self._browse_lock = asyncio.Lock()
        self._link = Link(self._ready, lambda: self.connection, self.publish, self.options)

    @classmethod
    def from_url(cls, url: str) -> RabbitBroker:
        """Same as the constructor."""
        return cls(url)

    # -- connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection, a confirming publish channel and an admin channel. Idempotent."""
        async with self._connect_lock:
            if self._connection is not None:
                return
            try:
                connection = await aio_pika.connect_robust(
                    self.options.amqp_url, client_properties={"connection_name": self.options.connection_name}
                )
            except (aiormq.exceptions.AMQPError, ConnectionError, OSError) as exc:
                raise BrokerConnectionError(f"cannot connect to RabbitMQ ({safe_url(self.url)}): {exc}") from exc
            transport = connection.transport
            self.server = ServerInfo.from_properties(
                transport.connection.server_properties if transport is not None else None
            )
            if self.options.queue_type == "quorum" and not self.server.quorum_delays:
                await connection.close()
                raise ConfigError(
                    f"{self.server.describe()} cannot delay jobs on quorum queues (TTL and at-least-once "
                    f"dead-lettering need 3.10 or later): add ?queue_type=classic to the broker URL, or upgrade"
                )
            self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
            admin = await connection.channel(publisher_confirms=False)
            self._topology = Topology(self.options, self.server, admin)
            self._connection = connection
            log.info("connected to %s as %r", self.server.describe(), self.options.connection_name)

    async def close(self) -> None:
        """Close the connection and every channel on it. Idempotent."""
        connection, self._connection = self._connection, None
        self._publisher = None
        if connection is not None:
            await connection.close()

    @property
    def connection(self) -> aio_pika.abc.AbstractRobustConnection:
        """The open connection (after :meth:`connect`)."""
        if self._connection is None:
            raise BrokerError("RabbitMQ broker is not connected: await broker.connect() first")
        return self._connection

    @property
    def topology(self) -> Topology:
        """Queue declarations (after :meth:`connect`)."""
        if self._topology is None:
            raise BrokerError("RabbitMQ broker is not connected: await broker.connect() first")
        return self._topology

    async def _ready(self) -> Topology:
        if self._connection is None:
            await self.connect()
        return self.topology

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistent, mandatory messages and wait until RabbitMQ confirmed every one.

        All are written first and the confirms awaited together. Raises :class:`BrokerError` when
        any was nacked, returned unroutable, or the channel failed, and before sending anything when
        a message's properties are too large or cannot be encoded (see :mod:`~asyncjobs_rabbitmq.wire`).
        """
        if not messages:
            return
        if self._connection is None:
            await self.connect()
        assert self._publisher is not None and self._connection is not None
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                if self._publisher.is_closed:  # the server closed it (a refused message): open another
                    self._publisher = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                channel = cast(aiormq.Channel, await self._publisher.get_underlay_channel())
                results = await publish_many(channel, messages)
        except UnsendableError as exc:
            raise BrokerError(f"RabbitMQ publish refused before sending: {exc}") from None
        except TimeoutError:
            raise BrokerConnectionError(
                f"RabbitMQ did not confirm {len(messages)} messages within {PUBLISH_TIMEOUT:.0f}s (connection down?)"
            ) from None
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
            OSError,
        ) as exc:
            raise BrokerConnectionError(f"RabbitMQ publish failed: {exc}") from exc
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            first = failed[0]
            if isinstance(first, asyncio.CancelledError) and not isinstance(first, aiormq.exceptions.AMQPError):
                raise first
            unroutable = [i for i, r in enumerate(results) if isinstance(r, aiormq.exceptions.PublishError)]
            why = "returned unroutable" if unroutable else str(first) or repr(first)
            text = f"RabbitMQ did not accept {len(failed)} of {len(messages)} messages: {why}"
            raise UnroutableError(text, unroutable) if len(unroutable) == len(failed) else BrokerError(text)

    async def route(self, queue: str, not_before: float | None) -> str:
        """The RabbitMQ queue to publish a job of ``queue`` due at ``not_before`` into."""
        return await self._link.route(queue, not_before)

    async def enqueue(self, jobs: Sequence[OutgoingJob]) -> list[bool]:
        """Publish every job persistently and wait for all confirms; ``unique_key`` is not enforced here.

        Jobs returned unroutable (their queue was deleted since this process declared it) are
        published once more after declaring their queues again.
        """
        try:
            await self.publish(await self._messages(jobs))
        except UnroutableError as exc:
            again = [jobs[i] for i in exc.indexes]
            self.topology.forget({job.queue for job in again})
            await self.publish(await self._messages(again))
        return [True] * len(jobs)

    async def _messages(self, jobs: Sequence[OutgoingJob]) -> list[Outgoing]:
        messages: list[Outgoing] = []
        work: dict[str, str] = {}  # the work queue of each queue, looked up once per batch
        for job in jobs:
            if job.not_before is None:
                key = work.get(job.queue)
                if key is None:
                    key = work[job.queue] = await self.route(job.queue, None)
            else:
                key = await self.route(job.queue, job.not_before)
            messages.append((key, job.body, wire.properties(job.id, wire.due_headers(job.not_before))))
        return messages

    async def consumer(self, queues: Sequence[str], *, prefetch: int, lease_seconds: float) -> RabbitConsumer:
        """A consumer on a channel of its own with ``basic.qos(prefetch)`` per queue."""
        consumer = RabbitConsumer(self._link, list(queues), prefetch, lease_seconds)
        await consumer.start()
        return consumer

    # -- admin ---------------------------------------------------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        """Ready (work queue), scheduled (delay buckets) and dead counts.

        AMQP reports only the messages waiting in a queue. Messages prefetched by a consumer but not
        yet taken by its worker count as ready (or scheduled) when that consumer is in this process;
        those of other processes, and every running job, are unacked and counted nowhere:
        ``in_flight`` counts this process's leases only, and ``oldest_ready_age`` is ``None``.
        """
        names = (await self._ready()).names(queue)
        buckets = [names.bucket(ms) for ms in BUCKETS_MS]
        ready, dead, *delayed = await self._message_counts([names.work, names.dead, *buckets])
        buffered_ready, buffered_scheduled, in_flight = self._link.counts(queue)
        return QueueStats(
            ready=ready + buffered_ready, scheduled=sum(delayed) + buffered_scheduled, in_flight=in_flight, dead=dead
        )

    async def queue_exists(self, queue: str) -> bool:
        """Whether ``queue``'s work queue exists on the server: a passive declare, which creates nothing."""
        transport = self.connection.transport
        if transport is None:
            raise BrokerConnectionError("RabbitMQ connection is down (reconnecting)")
        channel = await transport.connection.channel(publisher_confirms=False)
        try:
            await channel.queue_declare((await self._ready()).names(queue).work, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:  # the server closed the channel with it
            return False
        await channel.close()
        return True

    async def _message_counts(self, queues: Sequence[str]) -> list[int]:
        """Messages waiting in each queue, 0 for one that does not exist; declares nothing."""
        transport = self.connection.transport
        if transport is None:
            raise BrokerConnectionError("RabbitMQ connection is down (reconnecting)")
        counts: list[int] = []
        channel = await transport.connection.channel(publisher_confirms=False)
        try:
            for name in queues:
                try:
                    declared = await channel.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:  # the server closed the channel with it
                    counts.append(0)
                    channel = await transport.connection.channel(publisher_confirms=False)
                    continue
                counts.append(int(declared.message_count or 0))
        finally:
            await channel.close()
        return counts

    async def _browse(
        self, queue: str, visit: Callable[[DeliveredMessage], Awaitable[bool]], stop_after_hit: bool = False
    ) -> None:
        """Read the dead letters of ``queue`` in order without removing them.

        Each message is fetched unacked; ``visit`` returns ``True`` when it acked (removed) it. The
        channel is closed at the end, so every message not acked goes back where it was.
        """
        names = await (await self._ready()).ensure(queue)
        async with self._browse_lock:
            channel = await self.connection.channel(publisher_confirms=False)
            try:
                declared = await channel.declare_queue(names.dead, durable=True, arguments=DEAD_ARGUMENTS, robust=False)
                total = declared.declaration_result.message_count or 0
                underlay = await channel.get_underlay_channel()
                for _ in range(min(total, MAX_BROWSE)):
                    message = await underlay.basic_get(names.dead, no_ack=False)
                    if message.delivery_tag is None:  # get-empty
                        break
                    if await visit(message) and stop_after_hit:
                        break
            finally:
                await channel.close()

    def _letter(self, queue: str, message: DeliveredMessage) -> DeadLetter:
        dead_id = wire.job_id_of(message) or f"tag-{message.delivery_tag}"
        return DeadLetter(dead_id, queue, message.body, wire.dead_info_of(message))

    async def list_dead(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Newest first. Reads the whole dead-letter queue (up to ``MAX_BROWSE``): O(n)."""
        found: list[DeadLetter] = []

        async def collect(message: DeliveredMessage) -> bool:
            found.append(self._letter(queue, message))
            return False

        await self._browse(queue, collect)
        return list(reversed(found))[:limit]

    async def get_dead(self, queue: str, dead_id: str) -> DeadLetter | None:
        """One dead letter by id (a scan of the dead-letter queue)."""
        found: list[DeadLetter] = []

        async def match(message: DeliveredMessage) -> bool:
            letter = self._letter(queue, message)
            if letter.id == dead_id:
                found.append(letter)
                return True
            return False

        await self._browse(queue, match, stop_after_hit=True)
        return found[0] if found else None

    async def replay_dead(self, queue: str, dead_id: str, body: bytes) -> bool:
        """Publish ``body`` to the work queue (confirmed), then remove the dead letter."""
        work = await self.route(queue, None)
        replayed: list[bool] = []

        async def swap(message: DeliveredMessage) -> bool:
            if self._letter(queue, message).id != dead_id:
                return False
            await self.publish([(work, body, wire.properties(peek_id(body) or dead_id))])
            await message.channel.basic_ack(message.delivery_tag or 0)
            replayed.append(True)
            return True

        await self._browse(queue, swap, stop_after_hit=True)
        return bool(replayed)

    async def purge_dead(self, queue: str, dead_ids: Sequence[str] | None = None) -> int:
        """Delete the given dead letters (all when ``None``: one ``queue.purge``)."""
        if dead_ids is None:
            names = await (await self._ready()).ensure(queue)
            assert self._topology is not None
            declared = await self._topology.declare(names.dead, DEAD_ARGUMENTS)
            return _purged(await declared.purge())
        wanted = set(dead_ids)
        deleted: list[str] = []

        async def drop(message: DeliveredMessage) -> bool:
            letter_id = self._letter(queue, message).id
            if letter_id in wanted:
                await message.channel.basic_ack(message.delivery_tag or 0)
                wanted.discard(letter_id)
                deleted.append(letter_id)
                return not wanted
            return False

        await self._browse(queue, drop, stop_after_hit=True)
        return len(deleted)

    async def delete_queues(self, queue: str) -> None:
        """Delete every RabbitMQ queue of ``queue`` with its messages (tests, tear-down)."""
        await (await self._ready()).delete(queue)

    def new_message_id(self) -> str:
        """A fresh message id for bodies without a job id."""
        return uuid.uuid4().hex


def _purged(result: Any) -> int:
    count = getattr(result, "message_count", 0)
    return int(count or 0)

"""What a consumer needs of its broker, and nothing more: a channel, declarations, confirmed publishing.

The broker hands each consumer a :class:`Link`. The consumer never sees the broker itself; it
reports the jobs it buffers and holds through :meth:`Link.attach`, which is how the broker's
``stats`` counts them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import aio_pika.abc

from asyncjobs.clock import wall_time
from asyncjobs_rabbitmq.options import RabbitOptions
from asyncjobs_rabbitmq.publisher import Outgoing
from asyncjobs_rabbitmq.topology import Names, Topology, bucket_for
from asyncjobs_rabbitmq.version import ServerInfo


class Holdings(Protocol):
    """Something that holds messages of a queue in this process (a consumer)."""

    def counts(self, queue: str) -> tuple[int, int, int]:
        """Buffered ready, buffered early (scheduled), and handed out, for ``queue``."""
        ...


class Link:
    """A consumer's view of its broker's connection (see the module doc)."""

    def __init__(
        self,
        ready: Callable[[], Awaitable[Topology]],
        connection: Callable[[], aio_pika.abc.AbstractRobustConnection],
        publish: Callable[[Sequence[Outgoing]], Awaitable[None]],
        options: RabbitOptions,
    ) -> None:
        self._ready = ready
        self._connection = connection
        self._publish = publish
        self.options = options
        self._holdings: set[Holdings] = set()
        self._topology: Topology | None = None

    @property
    def server(self) -> ServerInfo:
        """The connected server (version and features); after :meth:`connect`."""
        assert self._topology is not None, "connect() first"
        return self._topology.server

    async def connect(self) -> Topology:
        """Connect the broker if needed; the declarations it keeps."""
        self._topology = await self._ready()
        return self._topology

    async def channel(self, prefetch: int) -> aio_pika.abc.AbstractRobustChannel:
        """A new channel without publisher confirms, ``basic.qos(prefetch)`` per consumer."""
        await self.connect()
        channel = await self._connection().channel(publisher_confirms=False)
        assert isinstance(channel, aio_pika.abc.AbstractRobustChannel)
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def names(self, queue: str) -> Names:
        """The names of ``queue``, its work and dead-letter queues declared."""
        return await (await self.connect()).ensure(queue)

    async def bucket(self, queue: str, ms: int) -> str:
        """The delay bucket of ``ms`` for ``queue``, declared."""
        return await (await self.connect()).ensure_bucket(queue, ms)

    async def route(self, queue: str, not_before: float | None) -> str:
        """Where a job of ``queue`` due at ``not_before`` (wall clock) is published: a bucket or the work queue."""
        ms = bucket_for(not_before - wall_time()) if not_before is not None else None
        return (await self.names(queue)).work if ms is None else await self.bucket(queue, ms)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistently and wait for every confirm (the broker's ``publish``)."""
        await self._publish(messages)

    def attach(self, holdings: Holdings) -> None:
        """Count what ``holdings`` buffers and holds in the broker's stats (until :meth:`detach`)."""
        self._holdings.add(holdings)

    def detach(self, holdings: Holdings) -> None:
        """Stop counting ``holdings``."""
        self._holdings.discard(holdings)

    def counts(self, queue: str) -> tuple[int, int, int]:
        """Sum of :meth:`Holdings.counts` over every attached consumer."""
        ready = scheduled = held = 0
        for holdings in self._holdings:
            r, s, h = holdings.counts(queue)
            ready, scheduled, held = ready + r, scheduled + s, held + h
        return ready, scheduled, held

"""The Redis broker on a Redis Cluster: ``redis+cluster://host:port/0`` (``rediss+cluster://`` for TLS).

Every key of a queue shares the hash tag ``{PREFIX:QUEUE}``, so every script of one queue runs
on one hash slot. What spans queues is split here, one call per queue (its slot):

* an enqueue of jobs of several queues is one enqueue per queue (in the order of first sight);
* a consumer of several queues is one single-queue consumer per queue, asked in turn (each fetch
  starts with the next queue), and an ack, extend or release of several queues' leases is one call
  per queue. When no queue has a job ready it waits on every queue's wake list at once (one
  ``BLPOP`` per queue), at most :data:`MULTI_QUEUE_BLOCK` seconds, so a delayed job in any of them
  is seen at most that late.

The client is redis-py's cluster client, seeded by the URL's host and any ``seed=host:port``
parameters; like the single-server broker it never re-sends a call whose reply was lost (a
script may have run): a call cut by a failover raises
:class:`~asyncjobs.errors.BrokerConnectionError`, and the next call refreshes the slot map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from asyncjobs.broker import DeadLetterInfo, Delivery, OutgoingJob
from asyncjobs.clock import monotonic
from asyncjobs.errors import BrokerError, BrokerURLError
from asyncjobs_redis.broker import RedisBroker
from asyncjobs_redis.consumer import RedisConsumer
from asyncjobs_redis.errors import broker_errors

SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

MULTI_QUEUE_BLOCK = 1.0
"""Longest wait of a consumer of several queues before it asks every queue again."""


def _split_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The single-server form of ``url`` (``redis://``) and the extra seed nodes of its ``seed`` params."""
    parts = urlsplit(url)
    plain = SCHEMES.get(parts.scheme.lower())
    if plain is None:
        raise BrokerURLError(f"not a Redis Cluster URL: {parts.scheme}://...; expected redis+cluster://host:port/0")
    params = parse_qsl(parts.query, keep_blank_values=True)
    seeds: list[tuple[str, int]] = []
    for key, value in params:
        if key != "seed":
            continue
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise BrokerURLError(f"seed={value!r} in a Redis Cluster URL: use seed=host:port")
        seeds.append((host, int(port)))
    rest = [(k, v) for k, v in params if k != "seed"]
    return urlunsplit(parts._replace(scheme=plain, query=urlencode(rest))), seeds


class RedisClusterBroker(RedisBroker):
    """A :class:`~asyncjobs_redis.RedisBroker` on a Redis Cluster; see the module docstring.

    Everything the single-server broker guarantees holds per queue: each state change of a job is
    one script on its queue's slot. With ``appendfsync always`` on every node, a job the broker
    acknowledged is on its master's disk; whether it is on the replica that a failover promotes
    depends on asynchronous replication (see the package README's "Running on a cluster").
    """

    def __init__(self, url: str = "redis+cluster://127.0.0.1:7000/0") -> None:
        plain, self.seeds = _split_cluster_url(url)
        super().__init__(plain)
        self.url = url

    @classmethod
    def from_url(cls, url: str) -> RedisClusterBroker:
        """A cluster broker for ``url`` (not connected yet)."""
        return cls(url)

    def _new_client(self) -> Redis:
        """redis-py's cluster client; it has every command the broker uses, by the same names."""
        client = RedisCluster.from_url(
            self._client_url,
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds] or None,
            decode_responses=False,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=min(self.socket_timeout, 5.0),
            retry=Retry(NoBackoff(), 0),  # a script whose reply was lost may have run: never re-send it
        )
        return cast(Redis, client)

    async def enqueue(self, jobs: Sequence[OutgoingJob]) -> list[bool]:
        """Store every job, one call per queue (each queue's slot); a taken unique key gives ``False``.

        Jobs of several queues are not stored atomically together: when a call fails, the queues
        before it were stored (as with any enqueue of more than one chunk).
        """
        by_queue: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            by_queue.setdefault(job.queue, []).append(i)
        if len(by_queue) <= 1:
            return await super().enqueue(jobs)
        stored = [False] * len(jobs)
        for indexes in by_queue.values():
            for i, ok in zip(indexes, await super().enqueue([jobs[i] for i in indexes]), strict=True):
                stored[i] = ok
        return stored

    async def consumer(  # type: ignore[override]  # a RedisConsumer, or one per queue
        self, queues: Sequence[str], *, prefetch: int, lease_seconds: float
    ) -> RedisConsumer | MultiSlotConsumer:
        """A consumer of ``queues`` (in turn), at most ``prefetch`` leases at once over all of them."""
        await self.client()
        if len(set(queues)) == 1:
            return RedisConsumer(self, [queues[0]], prefetch, lease_seconds)
        return MultiSlotConsumer(self, list(dict.fromkeys(queues)), prefetch, lease_seconds)


class MultiSlotConsumer:
    """A consumer of several queues on a cluster: one single-queue consumer per queue (its slot).

    Fetches ask the queues in turn, starting with the next queue each time; ``prefetch`` bounds the
    leases held over all queues. Every other call goes to the consumer of each lease's queue.
    """

    def __init__(self, broker: RedisClusterBroker, queues: list[str], prefetch: int, lease_seconds: float) -> None:
        if not queues:
            raise ValueError("a consumer needs at least one queue")
        self._broker = broker
        self._queues = queues
        self._each = {queue: RedisConsumer(broker, [queue], prefetch, lease_seconds) for queue in queues}
        self._prefetch = prefetch
        self._lease = lease_seconds
        self._held: dict[str, float] = {}  # token -> until (local clock), for the shared prefetch
        self._turn = 0
        self._closed = False

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Lease up to ``max_count`` jobs of one queue (the first in turn with any), waiting up to
        ``wait_seconds`` for one."""
        deadline = monotonic() + max(wait_seconds, 0.0)
        while not self._closed:
            room = self._room(max_count)
            if room <= 0:
                await anyio.sleep(max(deadline - monotonic(), 0.0))
                return []
            start, self._turn = self._turn, (self._turn + 1) % len(self._queues)
            for k in range(len(self._queues)):
                got = await self._each[self._queues[(start + k) % len(self._queues)]].fetch(room, 0)
                if got:
                    until = monotonic() + self._lease
                    self._held.update((delivery.token, until) for delivery in got)
                    return got
            remaining = deadline - monotonic()
            if remaining <= 0:
                return []
            await self._wait(min(remaining, MULTI_QUEUE_BLOCK))
        return []

    def _room(self, max_count: int) -> int:
        if len(self._held) >= self._prefetch:
            now = monotonic()
            self._held = {token: until for token, until in self._held.items() if until > now}
        return min(max_count, self._prefetch - len(self._held))

    async def _wait(self, seconds: float) -> None:
        """Wait on every queue's wake list at once until one signals or ``seconds`` pass."""
        client, _ = await self._broker.client()
        timeout = max(round(seconds, 3), 0.001)
        failed: list[BaseException] = []
        async with anyio.create_task_group() as tg:

            async def one(wake: str) -> None:
                try:
                    with broker_errors("fetch (waiting)"):
                        await client.blpop([wake], timeout=timeout)
                except BrokerError as error:
                    failed.append(error)
                tg.cancel_scope.cancel()

            for queue in self._queues:
                tg.start_soon(one, self._broker.keys(queue).wake)
        if failed:
            raise failed[0]

    def _by_queue(self, deliveries: Sequence[Delivery]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for i, delivery in enumerate(deliveries):
            found.setdefault(delivery.queue, []).append(i)
        return found

    async def _per_queue(self, method: str, deliveries: Sequence[Delivery]) -> list[bool]:
        result = [False] * len(deliveries)
        for queue, indexes in self._by_queue(deliveries).items():
            call: Any = getattr(self._each[queue], method)
            for i, ok in zip(indexes, await call([deliveries[i] for i in indexes]), strict=True):
                result[i] = ok
        return result

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Push back every lease still held, one call per queue."""
        result = await self._per_queue("extend", deliveries)
        until = monotonic() + self._lease
        for delivery, ok in zip(deliveries, result, strict=True):
            if not ok:
                self._held.pop(delivery.token, None)
            elif delivery.token in self._held:
                self._held[delivery.token] = until
        return result

    async def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove finished jobs whose lease is still held, one call per queue."""
        for delivery in deliveries:
            self._held.pop(delivery.token, None)
        return await self._per_queue("ack", deliveries)

    async def retry(self, delivery: Delivery, body: bytes, not_before: float | None) -> bool:
        """See :meth:`RedisConsumer.retry`."""
        self._held.pop(delivery.token, None)
        return await self._each[delivery.queue].retry(delivery, body, not_before)

    async def dead_letter(self, delivery: Delivery, info: DeadLetterInfo) -> bool:
        """See :meth:`RedisConsumer.dead_letter`."""
        self._held.pop(delivery.token, None)
        return await self._each[delivery.queue].dead_letter(delivery, info)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give leased jobs back at once, one call per queue."""
        for delivery in deliveries:
            self._held.pop(delivery.token, None)
        for queue, indexes in self._by_queue(deliveries).items():
            await self._each[queue].release([deliveries[i] for i in indexes])

    async def close(self) -> None:
        """Stop fetching and give back every lease still held (each queue's consumer does its own)."""
        self._closed = True
        self._held.clear()
        for each in self._each.values():
            await each.close()


def from_url(url: str) -> RedisClusterBroker:
    """A Redis Cluster broker for ``url``; the ``asyncjobs.brokers`` entry point of ``redis+cluster``."""
    return RedisClusterBroker(url)

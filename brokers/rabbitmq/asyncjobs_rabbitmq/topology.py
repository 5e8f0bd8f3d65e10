"""Queue names, arguments and idempotent declarations.

For a queue ``Q`` (after the URL's ``queue_prefix``):

* ``Q``: the work queue (durable, quorum or classic). Its dead-letter exchange routes whatever the
  server itself dead-letters (a quorum queue's delivery limit on 4.x) to ``Q.dead``, never dropping it.
* ``Q.dead``: the dead-letter queue, always classic (browsing returns messages, which would count
  against a quorum queue's delivery limit).
* ``Q.delay.<ms>``: delay buckets with a queue-level ``x-message-ttl`` of ``<ms>`` that dead-letter
  back to ``Q`` (no plugin). Delays are decomposed into buckets of 0.25 s x 4^i (0.25 s .. 68 min);
  a job that comes back before its ``not_before`` is put in the next bucket by the consumer, and
  one due in less than 0.25 s is held by the consumer until it is due.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import aiormq

from asyncjobs.errors import BrokerError, ConfigError
from asyncjobs_rabbitmq.options import RabbitOptions
from asyncjobs_rabbitmq.version import ServerInfo

BUCKETS_MS: tuple[int, ...] = tuple(250 * 4**i for i in range(8))
"""Delay bucket TTLs in milliseconds: 0.25 s, 1 s, 4 s, 16 s, 64 s, 256 s, 1024 s, 4096 s."""


def bucket_for(remaining: float) -> int | None:
    """The bucket (ms) to wait ``remaining`` seconds in: the largest not longer than it.

    ``None`` when the wait is shorter than the smallest bucket: the job goes to the work queue and
    the consumer that receives it holds it until it is due. So a job is never early, and late
    only by the time it takes to be delivered.
    """
    ms = remaining * 1000
    chosen = None
    for bucket in BUCKETS_MS:
        if bucket <= ms:
            chosen = bucket
    return chosen


class Names:
    """The RabbitMQ names of one asyncjobs queue."""

    def __init__(self, prefix: str, queue: str) -> None:
        self.queue = queue
        self.work = f"{prefix}{queue}"
        self.dead = f"{self.work}.dead"

    def bucket(self, ms: int) -> str:
        """The delay queue holding jobs for ``ms`` milliseconds."""
        return f"{self.work}.delay.{ms}"

    def all(self) -> list[str]:
        """Every queue name this asyncjobs queue may use."""
        return [self.work, self.dead, *(self.bucket(ms) for ms in BUCKETS_MS)]


def _replicated(queue_type: str, dead_letter_to: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-queue-type": queue_type,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_to,
    }
    if queue_type == "quorum":  # the server confirms the move before removing the source message
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def work_arguments(options: RabbitOptions, names: Names) -> dict[str, Any]:
    """Arguments of the work queue (the consumer timeout is a consumer argument: changing it never conflicts)."""
    return _replicated(options.queue_type, names.dead)


def consumer_arguments(options: RabbitOptions, server: ServerInfo) -> dict[str, Any]:
    """Arguments of ``basic.consume``: the consumer timeout where the server takes it."""
    if server.consumer_timeout_argument:
        return {"x-consumer-timeout": int(options.consumer_timeout * 1000)}
    return {}


def bucket_arguments(options: RabbitOptions, names: Names, ms: int) -> dict[str, Any]:
    """Arguments of a delay bucket: expire after ``ms`` and go back to the work queue."""
    return {**_replicated(options.queue_type, names.work), "x-message-ttl": ms}


DEAD_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}


class Topology:
    """Declares queues once per process (declarations are idempotent on the server too).

    A queue that exists with other arguments raises :class:`ConfigError` naming the queue and the
    argument, as the server reported it.
    """

    def __init__(self, options: RabbitOptions, server: ServerInfo, channel: aio_pika.abc.AbstractChannel) -> None:
        self.options = options
        self.server = server
        self._channel = channel
        self._declared: set[str] = set()
        self._names: dict[str, Names] = {}

    def names(self, queue: str) -> Names:
        """Names of ``queue`` (cached)."""
        names = self._names.get(queue)
        if names is None:
            names = self._names[queue] = Names(self.options.queue_prefix, queue)
        return names

    @property
    def touched(self) -> list[str]:
        """The asyncjobs queues this process has declared."""
        return list(self._names)

    async def declare(self, name: str, arguments: dict[str, Any]) -> aio_pika.abc.AbstractQueue:
        """Declare one durable queue; returns it (with its message and consumer counts)."""
        try:
            queue = await self._channel.declare_queue(name, durable=True, arguments=arguments, robust=False)  # type: ignore[call-arg]
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"RabbitMQ queue {name!r} already exists with other arguments ({_reason(exc)}); "
                f"delete it or use the same queue_type/consumer_timeout as its creator"
            ) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise ConfigError(f"RabbitMQ refused to declare queue {name!r}: {_reason(exc)}") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError) as exc:
            raise BrokerError(f"could not declare RabbitMQ queue {name!r}: {_reason(exc)}") from exc
        self._declared.add(name)
        return queue

    async def ensure(self, queue: str) -> Names:
        """Declare the work and dead-letter queues of ``queue`` (first use only)."""
        names = self.names(queue)
        if names.work not in self._declared:
            await self.declare(names.dead, DEAD_ARGUMENTS)
            await self.declare(names.work, work_arguments(self.options, names))
        return names

    async def ensure_bucket(self, queue: str, ms: int) -> str:
        """Declare the delay bucket of ``ms`` for ``queue`` (first use only); returns its name."""
        names = await self.ensure(queue)
        name = names.bucket(ms)
        if name not in self._declared:
            await self.declare(name, bucket_arguments(self.options, names, ms))
        return name

    def forget(self, queues: set[str]) -> None:
        """Declare these queues again on next use (they were deleted behind this process's back)."""
        for queue in queues:
            self._declared.difference_update(self.names(queue).all())

    async def delete(self, queue: str) -> None:
        """Delete every RabbitMQ queue of ``queue`` (tests and tear-down; missing ones are fine)."""
        for name in self.names(queue).all():
            await self._channel.queue_delete(name)
            self._declared.discard(name)


def _reason(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = args[0] if args else exc
    return str(getattr(text, "reply_text", text))

"""RabbitMQ broker for asyncjobs: ``amqp://user:pass@host:5672/vhost?queue_type=quorum``.

Publisher confirms on every enqueue, manual acks, prefetch tied to the worker, delays through
TTL bucket queues (no plugin), a dead-letter queue per queue, quorum (default) or classic queues.
See the package README for the guarantees per server version.
"""

from __future__ import annotations

from asyncjobs_rabbitmq.broker import RabbitBroker
from asyncjobs_rabbitmq.consumer import RabbitConsumer
from asyncjobs_rabbitmq.options import RabbitOptions
from asyncjobs_rabbitmq.version import ServerInfo

__all__ = ["RabbitBroker", "RabbitConsumer", "RabbitOptions", "ServerInfo", "from_url"]


def from_url(url: str) -> RabbitBroker:
    """Create (not connect) the broker an ``amqp://`` or ``amqps://`` URL names."""
    return RabbitBroker(url)

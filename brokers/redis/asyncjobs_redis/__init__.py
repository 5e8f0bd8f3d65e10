"""Redis broker for asyncjobs: ``redis://host:port/db?prefix=NAME`` (or ``rediss://`` for TLS).

On a Redis Cluster: ``redis+cluster://host:port/0?prefix=NAME`` (:class:`RedisClusterBroker`).

Installed, it is found by URL scheme: ``asyncjobs.broker.from_url("redis://127.0.0.1:6379/0")``.
"""

from __future__ import annotations

from asyncjobs_redis.broker import RedisBroker
from asyncjobs_redis.cluster import RedisClusterBroker
from asyncjobs_redis.consumer import RedisConsumer


def from_url(url: str) -> RedisBroker:
    """A Redis broker for ``url`` (not connected yet); the ``asyncjobs.brokers`` entry point."""
    return RedisBroker(url)


__all__ = ["RedisBroker", "RedisClusterBroker", "RedisConsumer", "from_url"]

"""Fixtures of the cluster tests: one private Redis Cluster per module, a broker on it per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from asyncjobs_redis import RedisClusterBroker
from redis.asyncio.cluster import RedisCluster as ClusterClient

from asyncjobs.broker import Broker
from tests.servers.redis_cluster import RedisCluster, redis_cluster


@pytest.fixture(scope="module")
def redis_nodes() -> Iterator[RedisCluster]:
    """Six redis-server processes in cluster mode (three masters, three replicas) of this module's own."""
    with redis_cluster() as started:
        print(f"redis cluster of 6 formed in {started.took['start']:.1f} s")
        yield started


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` on every master of the cluster; how many were deleted."""
    client = ClusterClient.from_url(url.replace("redis+cluster://", "redis://"))
    deleted = 0
    try:
        async for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
            deleted += await client.unlink(key)
    finally:
        await client.aclose()
    return deleted


@pytest.fixture
async def broker(redis_nodes: RedisCluster) -> AsyncIterator[Broker]:
    """A connected Redis Cluster broker whose keys live under a prefix of the test's own."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    connected = RedisClusterBroker(f"{redis_nodes.url}?prefix={ns}")
    await connected.connect()
    try:
        yield connected
    finally:
        await connected.close()
        await delete_prefix(redis_nodes.url, ns)

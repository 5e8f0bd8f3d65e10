"""Harness for the Redis broker: a key prefix of its own per test, its keys deleted afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asyncjobs_redis import RedisBroker  # ImportError when the package is missing: no harness
from redis.asyncio import Redis

from asyncjobs.broker import Broker

REDIS_URL = "redis://127.0.0.1:6379/0"


async def delete_prefix(prefix: str, url: str = REDIS_URL) -> int:
    """Delete every key under ``prefix`` (its queues' hash tags); how many were deleted."""
    client = Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


@asynccontextmanager
async def redis_harness(namespace: str) -> AsyncIterator[Broker]:
    """A connected Redis broker whose keys live under the prefix ``namespace``."""
    broker = RedisBroker(f"{REDIS_URL}?prefix={namespace}")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()
        await delete_prefix(namespace)

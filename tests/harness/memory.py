"""Harness for the in-memory broker: a fresh named broker per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asyncjobs.broker import Broker
from asyncjobs.memory import MemoryBroker


@asynccontextmanager
async def memory_harness(namespace: str) -> AsyncIterator[Broker]:
    """A connected in-memory broker that no other test shares (its URL finds it in this process)."""
    url = f"memory://{namespace}"
    broker = MemoryBroker.from_url(url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()
        MemoryBroker._instances.pop(namespace, None)  # its jobs go with the test

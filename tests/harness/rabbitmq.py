"""Harness for the RabbitMQ broker: unique queue names per namespace, every queue deleted afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asyncjobs_rabbitmq import RabbitBroker  # ImportError when the package is missing: harness skipped

from asyncjobs.broker import Broker

URL = "amqp://guest:guest@127.0.0.1:5672/"


@asynccontextmanager
async def rabbitmq_harness(namespace: str, queue_type: str = "quorum", url: str = URL) -> AsyncIterator[Broker]:
    """A connected RabbitMQ broker whose queues are named ``<namespace>.<queue>`` and deleted at the end.

    ``url``: the server (a private node or a cluster's node; default the shared one).
    """
    broker = RabbitBroker(f"{url}?queue_type={queue_type}&queue_prefix={namespace}.&connection_name=test-{namespace}")
    await broker.connect()
    try:
        yield broker
    finally:
        try:
            for queue in broker.topology.touched:
                await broker.delete_queues(queue)
        finally:
            await broker.close()


@asynccontextmanager
async def classic_rabbitmq_harness(namespace: str) -> AsyncIterator[Broker]:
    """The same on classic queues."""
    async with rabbitmq_harness(namespace, "classic") as broker:
        yield broker

"""The broker contract suite again, on classic queues (the default harness uses quorum queues)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from asyncjobs.broker import Broker
from tests.contract.test_contract import *  # noqa: F403 - the same tests, another fixture
from tests.harness import require_server
from tests.harness.rabbitmq import classic_rabbitmq_harness

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A RabbitMQ broker on classic queues, isolated by a queue-name prefix."""
    require_server("rabbitmq")
    async with classic_rabbitmq_harness(f"t{uuid.uuid4().hex[:12]}") as connected:
        yield connected

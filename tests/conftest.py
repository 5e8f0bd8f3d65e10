"""Shared fixtures: the anyio backend and per-broker harnesses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from asyncjobs.broker import Broker
from tests.harness import harnesses, require_server

BROKER_SERVER = {"redis": "redis", "rabbitmq": "rabbitmq"}


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.fixture(params=sorted(harnesses()))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A connected broker of each kind, isolated in a namespace of its own."""
    name: str = request.param
    if name in BROKER_SERVER:
        require_server(BROKER_SERVER[name])
    async with harnesses()[name](f"t{uuid.uuid4().hex[:12]}") as connected:
        yield connected

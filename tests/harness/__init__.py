"""Per-broker test harnesses: each yields a connected broker in a namespace of its own.

A harness is an async context manager factory ``(namespace: str) -> AsyncContextManager[Broker]``
that connects the broker, isolates it (a database, key prefix, vhost or unique queue names) and
cleans everything up afterwards. The contract suite runs every test against every harness.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from asyncjobs.broker import Broker

Harness = Callable[[str], AbstractAsyncContextManager[Broker]]

SERVERS = {
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
    "postgres": ("127.0.0.1", 5432),
}


def server_up(name: str) -> bool:
    """Whether the named loopback server accepts TCP connections."""
    host, port = SERVERS[name]
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_server(name: str) -> None:
    """Skip the calling test when the server is down; under ``CI=true`` fail instead."""
    if server_up(name):
        return
    host, port = SERVERS[name]
    reason = f"{name} server not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: broker tests must not be skipped)")
    pytest.skip(reason)


def harnesses() -> dict[str, Harness]:
    """Every broker harness, keyed by broker name; the contract suite is parametrized over it."""
    from tests.harness.memory import memory_harness

    found: dict[str, Harness] = {"memory": memory_harness}
    try:
        from tests.harness.redis import redis_harness
    except ImportError:  # the Redis broker package is not installed
        pass
    else:
        found["redis"] = redis_harness
    try:
        from tests.harness.rabbitmq import rabbitmq_harness
    except ImportError:
        pass
    else:
        found["rabbitmq"] = rabbitmq_harness
    return found

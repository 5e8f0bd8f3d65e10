"""Redis client errors as asyncjobs broker errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions

from asyncjobs.errors import BrokerConnectionError, BrokerError


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Raise :class:`BrokerConnectionError` for a lost or unreachable server, :class:`BrokerError` otherwise."""
    try:
        yield
    except (exceptions.ConnectionError, exceptions.TimeoutError, ConnectionError, TimeoutError) as exc:
        raise BrokerConnectionError(f"redis: {what} failed, server unreachable: {exc}") from exc
    except exceptions.RedisError as exc:
        raise BrokerError(f"redis: {what} failed: {exc}") from exc

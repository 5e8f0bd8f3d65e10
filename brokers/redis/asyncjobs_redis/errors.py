"""Redis client errors as asyncjobs broker errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions

from asyncjobs.errors import BrokerConnectionError, BrokerError


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Raise :class:`BrokerConnectionError` for a lost or unreachable server, :class:`BrokerError` otherwise.

    A refused password is a :class:`BrokerError` of its own ("authentication failed"): trying
    again cannot help, so it is not a connection error (which the worker retries).
    """
    try:
        yield
    except (exceptions.AuthenticationError, exceptions.AuthenticationWrongNumberOfArgsError) as exc:
        raise BrokerError(
            f"redis: {what} failed, authentication failed: {exc} (check the user and password of the broker URL)"
        ) from exc
    except (exceptions.ConnectionError, exceptions.TimeoutError, ConnectionError, TimeoutError) as exc:
        raise BrokerConnectionError(f"redis: {what} failed, server unreachable: {exc}") from exc
    except exceptions.RedisError as exc:
        raise BrokerError(f"redis: {what} failed: {exc}") from exc

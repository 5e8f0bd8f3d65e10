"""Job handles: the result store a :class:`~asyncjobs.JobRef` reads, and what the worker writes there.

Stores: :class:`MemoryResultStore` (the natural one of ``memory://``), ``RedisResultStore``
(``asyncjobs.results.redis``, the natural one of ``redis://``; needs ``redis``) and
``PostgresResultStore`` (``asyncjobs.results.postgres``; needs ``asyncjobs[postgres]``). RabbitMQ is
not a database: ``amqp://`` apps pass one of the last two as ``App(results=...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncjobs.results.memory import MemoryResultStore
from asyncjobs.results.store import JobStatus, ResultStore, State
from asyncjobs.results.watch import progress

if TYPE_CHECKING:
    from asyncjobs.results.postgres import PostgresResultStore
    from asyncjobs.results.redis import RedisResultStore

__all__ = [
    "JobStatus",
    "MemoryResultStore",
    "PostgresResultStore",
    "RedisResultStore",
    "ResultStore",
    "State",
    "progress",
]


def __getattr__(name: str) -> Any:
    """The Redis and PostgreSQL stores, imported on first use (their client packages are optional)."""
    if name == "RedisResultStore":
        from asyncjobs.results.redis import RedisResultStore

        return RedisResultStore
    if name == "PostgresResultStore":
        from asyncjobs.results.postgres import PostgresResultStore

        return PostgresResultStore
    raise AttributeError(name)

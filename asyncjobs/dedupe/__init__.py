"""Idempotency: records of job keys that keep a job from running twice.

Stores: :class:`MemoryDedupeStore` (here), ``RedisDedupeStore`` (``asyncjobs.dedupe.redis``,
needs ``redis``) and ``PostgresDedupeStore`` (``asyncjobs.dedupe.postgres``, needs
the ``postgres`` extra). :func:`store_from_url` picks one by URL scheme.
"""

from __future__ import annotations

from asyncjobs.dedupe.memory import MemoryDedupeStore
from asyncjobs.dedupe.store import (
    ActiveClaim,
    Claim,
    DedupeRecord,
    DedupeStore,
    Status,
    current_claim,
    key_for,
)
from asyncjobs.errors import ConfigError

__all__ = [
    "ActiveClaim",
    "Claim",
    "DedupeRecord",
    "DedupeStore",
    "MemoryDedupeStore",
    "Status",
    "current_claim",
    "key_for",
    "store_from_url",
]

_shared_memory: dict[str, MemoryDedupeStore] = {}


def store_from_url(url: str, *, prefix: str = "asyncjobs") -> DedupeStore:
    """The dedupe store a URL names: ``memory://NAME``, ``redis://...``/``rediss://...`` or
    ``postgresql://...`` (``postgres://`` too). ``prefix`` names the Redis key prefix or the
    PostgreSQL table prefix. ``memory://NAME`` returns the same store for the same name in a process.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        return _shared_memory.setdefault(url, MemoryDedupeStore())
    if scheme in ("redis", "rediss", "unix"):
        from asyncjobs.dedupe.redis import RedisDedupeStore

        return RedisDedupeStore.from_url(url, prefix=prefix)
    if scheme in ("postgresql", "postgres"):
        from asyncjobs.dedupe.postgres import PostgresDedupeStore

        return PostgresDedupeStore(url, table=f"{prefix}_dedupe")
    raise ConfigError(f"no dedupe store for URL {url!r}; expected memory://, redis://... or postgresql://...")

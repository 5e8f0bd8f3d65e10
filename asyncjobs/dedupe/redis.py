"""The Redis dedupe store: one hash and one history list per key, changed only by Lua scripts.

Needs the ``redis`` package (the ``redis`` extra). Times come from the Redis
server's clock, so workers whose clocks drift still agree on when a claim expires. Each key's
two Redis keys share a hash tag, so the layout works on Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from asyncjobs.dedupe.store import HISTORY_LIMIT, Claim, DedupeRecord, Status
from asyncjobs.errors import ConfigError
from asyncjobs.extras import install_command

if TYPE_CHECKING:
    from redis.asyncio import Redis

_SCRIPTS = ("claim", "finish", "extend", "enqueue", "unenqueue")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_cluster(client: Any) -> bool:
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:
        return False
    return isinstance(client, RedisCluster)


def _float(value: Any) -> float | None:
    return float(_text(value)) if value not in (None, b"", "") else None


class RedisDedupeStore:
    """Dedupe records in Redis under ``PREFIX:dedupe:{KEY}`` (hash) and ``...:history`` (list).

    Pass a ``redis.asyncio.Redis`` client, or use :meth:`from_url`. The store closes only a
    client it created itself.
    """

    def __init__(self, client: Redis, *, prefix: str = "asyncjobs", owns_client: bool = False) -> None:
        self._redis = client
        self._prefix = prefix
        self._owns = owns_client
        lua = resources.files("asyncjobs.dedupe") / "lua"
        self._scripts = {name: client.register_script((lua / f"{name}.lua").read_text()) for name in _SCRIPTS}

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "asyncjobs") -> RedisDedupeStore:
        """A store on its own connection pool to ``url`` (``redis://host:port/db``)."""
        try:
            from redis.asyncio import Redis
        except ImportError:
            raise ConfigError(f"the Redis dedupe store needs the redis client library: {install_command('redis')}") from None
        return cls(Redis.from_url(url), prefix=prefix, owns_client=True)

    def _keys(self, key: str) -> list[str]:
        record = f"{self._prefix}:dedupe:{{{key}}}"
        return [record, f"{record}:history"]

    async def _run(self, name: str, key: str, *args: str | int | float) -> Any:
        return await self._scripts[name](keys=self._keys(key), args=list(args))

    async def claim(
        self, key: str, owner: str, *, lease_seconds: float, ttl: float, job_id: str | None = None, attempt: int = 1
    ) -> Claim:
        """See :meth:`DedupeStore.claim`."""
        reply = await self._run("claim", key, owner, lease_seconds, ttl, job_id or "", attempt, HISTORY_LIMIT)
        outcome, until = _text(reply[0]), _float(reply[1])
        if outcome == "claimed":
            return Claim("claimed", until)
        return Claim("done" if outcome == "done" else "running", until, await self.get(key))

    async def extend(self, key: str, owner: str, lease_seconds: float) -> bool:
        """See :meth:`DedupeStore.extend`."""
        return bool(await self._run("extend", key, owner, lease_seconds))

    async def extend_many(self, claims: Sequence[tuple[str, str]], lease_seconds: float) -> list[bool]:
        """:meth:`extend` of every ``(key, owner)`` pair, in one pipelined round trip."""
        if not claims:
            return []
        if _is_cluster(self._redis):  # a cluster pipeline refuses scripts: one call per key's slot
            return [await self.extend(key, owner, lease_seconds) for key, owner in claims]
        script = self._scripts["extend"]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, owner in claims:
                await script(keys=self._keys(key), args=[owner, lease_seconds], client=pipe)
            replies = await pipe.execute()
        return [bool(r) for r in replies]

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        """See :meth:`DedupeStore.complete`."""
        return bool(await self._run("finish", key, owner, "done", ttl, "", HISTORY_LIMIT))

    async def release(self, key: str, owner: str, ttl: float, *, status: Status = "retrying", error: str = "") -> bool:
        """See :meth:`DedupeStore.release`."""
        return bool(await self._run("finish", key, owner, status, ttl, error[:2000], HISTORY_LIMIT))

    async def claim_enqueue(self, key: str, ttl: float) -> bool:
        """See :meth:`DedupeStore.claim_enqueue`."""
        return bool(await self._run("enqueue", key, ttl, HISTORY_LIMIT))

    async def release_enqueue(self, key: str) -> None:
        """See :meth:`DedupeStore.release_enqueue`."""
        await self._run("unenqueue", key)

    async def get(self, key: str) -> DedupeRecord | None:
        """See :meth:`DedupeStore.get`."""
        record, history = self._keys(key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(record)
            pipe.lrange(history, 0, -1)
            fields, events = await pipe.execute()
        if not fields:
            return None
        doc = {_text(k): _text(v) for k, v in fields.items()}
        return DedupeRecord(
            key=key,
            status=cast(Status, doc.get("status", "pending")),
            owner=doc.get("owner") or None,
            job_id=doc.get("job_id") or None,
            attempt=int(doc.get("attempt") or 0),
            created_at=_float(doc.get("created_at")) or 0.0,
            updated_at=_float(doc.get("updated_at")) or 0.0,
            lease_until=_float(doc.get("lease_until")),
            expires_at=_float(doc.get("expires_at")) or 0.0,
            history=tuple(json.loads(_text(e)) for e in events),
        )

    async def delete(self, key: str) -> bool:
        """See :meth:`DedupeStore.delete`."""
        return bool(await self._redis.delete(*self._keys(key)))

    async def close(self) -> None:
        """Close the client when this store created it."""
        if self._owns:
            await self._redis.aclose()

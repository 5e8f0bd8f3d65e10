"""The Redis result store: the natural one of ``redis://`` brokers, and a choice for ``amqp://`` users.

Needs the ``redis`` package (installed with ``asyncjobs-redis``). A job's record is a hash
``{PREFIX:job:ID}`` (each field JSON, the result its raw JSON text) with a history list
``...:h`` and a notify list ``...:n`` that gets one element on the final write: a waiter blocks
on it (``BLMOVE`` of the list onto itself, so the element stays for every other waiter), never
polls. Cancel marks are one sorted set ``{PREFIX:cancels}`` scored by expiry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from asyncjobs.clock import wall_time
from asyncjobs.errors import ConfigError
from asyncjobs.results.store import CANCEL_TTL, HISTORY_LIMIT, MARKS_LISTED, MAX_RESULT_BYTES, Write, history_entry

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

_WAIT_SLICE = 2.0  # the longest single blocking call of a wait: below redis-py's default 5 s socket timeout

# Merge a record (KEYS: record, history, notify; ARGV: ttl, history entry or '', final flag or '',
# then field/value pairs). The cancel marks live in a key of their own slot: not touched here.
_MERGE = f"""
local ttl = tonumber(ARGV[1])
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
redis.call('EXPIRE', KEYS[1], ttl)
if ARGV[2] ~= '' then
    redis.call('RPUSH', KEYS[2], ARGV[2])
    redis.call('LTRIM', KEYS[2], -{HISTORY_LIMIT}, -1)
    redis.call('EXPIRE', KEYS[2], ttl)
end
if ARGV[3] ~= '' then
    redis.call('DEL', KEYS[3])
    redis.call('RPUSH', KEYS[3], '1')
    redis.call('EXPIRE', KEYS[3], ttl)
end
return 0
"""

_QUEUED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisResultStore:
    """Job records and cancel marks on a Redis server. Pass a client, or use :meth:`from_url`.

    The store closes only a client it opened itself (from ``url``). Results over ``max_result_bytes`` are
    refused (Redis would take up to 512 MB; a result is read back whole by every waiter).
    """

    local = False

    def __init__(
        self,
        client: Redis | None = None,
        *,
        url: str | None = None,
        prefix: str = "asyncjobs",
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        if (client is None) == (url is None):
            raise ConfigError("RedisResultStore takes a client or a url, not both")
        self._given = client
        self._url = url
        self._own: Redis | None = None  # the client this store opened, on the loop it belongs to
        self._loop: asyncio.AbstractEventLoop | None = None
        self.prefix = prefix
        self.max_result_bytes = max_result_bytes
        self._cancels = f"{{{prefix}:cancels}}"

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "asyncjobs", max_result_bytes: int = MAX_RESULT_BYTES
    ) -> RedisResultStore:
        """A store on its own connection pool to ``url`` (``redis://host:port/db``; query options dropped).

        The pool opens on first use, one per event loop (a second ``anyio.run`` gets a new one).
        """
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise ConfigError("the Redis result store needs the 'redis' package: pip install asyncjobs-redis") from None
        parts = urlsplit(url)
        return cls(
            url=urlunsplit(parts._replace(query="", fragment="")), prefix=prefix, max_result_bytes=max_result_bytes
        )

    @property
    def _redis(self) -> Redis:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._own is None or self._loop is not loop:
            from redis.asyncio import Redis

            assert self._url is not None
            self._own, self._loop = Redis.from_url(self._url), loop
        return self._own

    def _keys(self, job_id: str) -> tuple[str, str, str]:
        record = f"{{{self.prefix}:job:{job_id}}}"
        return record, f"{record}:h", f"{record}:n"

    @staticmethod
    def _encode(fields: Mapping[str, Any]) -> dict[str, str]:
        return {k: (v if k == "result" else json.dumps(v)) for k, v in fields.items()}

    def _merge(self, pipe: Pipeline, job_id: str, fields: Mapping[str, Any], ttl: float, final: bool = False) -> None:
        """One script call: merge ``fields``, append the history entry, on ``final`` fill the notify list."""
        entry = json.dumps(history_entry(fields)) if "status" in fields else ""
        flat = [part for pair in self._encode(fields).items() for part in pair]
        pipe.eval(_MERGE, 3, *self._keys(job_id), max(1, int(ttl)), entry, "1" if final else "", *flat)

    async def queued(self, jobs: Sequence[tuple[str, Mapping[str, Any]]], ttl: float) -> None:
        """See :meth:`ResultStore.queued`."""
        if not jobs:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, fields in jobs:
                record, history, _ = self._keys(job_id)
                flat = [part for pair in self._encode(fields).items() for part in pair]
                pipe.eval(_QUEUED, 2, record, history, max(1, int(ttl)), json.dumps(history_entry(fields)), *flat)
            await pipe.execute()

    async def started(self, job_id: str, fields: Mapping[str, Any], ttl: float) -> bool:
        """See :meth:`ResultStore.started`."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self._merge(pipe, job_id, fields, ttl)
            pipe.zscore(self._cancels, job_id)
            replies = await pipe.execute()
        score = replies[-1]
        return score is not None and float(score) > wall_time()

    async def write(self, job_id: str, fields: Mapping[str, Any], ttl: float, *, final: bool = False) -> None:
        """See :meth:`ResultStore.write`."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self._merge(pipe, job_id, fields, ttl, final)
            if final:
                pipe.zrem(self._cancels, job_id)
            await pipe.execute()

    async def write_many(self, writes: Sequence[Write]) -> None:
        """See :meth:`ResultStore.write_many`: one pipeline."""
        if not writes:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, fields, ttl, final in writes:
                self._merge(pipe, job_id, fields, ttl, final)
                if final:
                    pipe.zrem(self._cancels, job_id)
            await pipe.execute()

    async def beat(
        self, progress: Mapping[str, Mapping[str, Any]], held: Sequence[str], ttl: float
    ) -> tuple[set[str], frozenset[str] | None]:
        """See :meth:`ResultStore.beat`."""
        now = wall_time()
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, fields in progress.items():
                self._merge(pipe, job_id, fields, ttl)
            pipe.zremrangebyscore(self._cancels, "-inf", now)
            pipe.zrange(self._cancels, 0, MARKS_LISTED)
            if held:
                pipe.zmscore(self._cancels, list(held))
            replies = await pipe.execute()
        if held:
            scores, listed = replies[-1], replies[-2]
            marked = {job_id for job_id, score in zip(held, scores, strict=True) if score is not None}
        else:
            marked, listed = set(), replies[-1]
        marks = frozenset(_text(m) for m in listed) if len(listed) <= MARKS_LISTED else None
        return marked, marks

    async def cancelled(self, job_id: str) -> bool:
        """See :meth:`ResultStore.cancelled`."""
        score = await self._redis.zscore(self._cancels, job_id)
        return score is not None and float(score) > wall_time()

    async def cancel(self, job_id: str, ttl: float = CANCEL_TTL) -> None:
        """See :meth:`ResultStore.cancel`."""
        await self._redis.zadd(self._cancels, {job_id: wall_time() + ttl})

    async def get(self, job_id: str) -> tuple[dict[str, Any] | None, bool]:
        """See :meth:`ResultStore.get`."""
        record, history, _ = self._keys(job_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(record)
            pipe.lrange(history, 0, -1)
            pipe.zscore(self._cancels, job_id)
            fields, events, score = await pipe.execute()
        marked = score is not None and float(score) > wall_time()
        if not fields:
            return None, marked
        doc: dict[str, Any] = {}
        for key, value in fields.items():
            name = _text(key)
            doc[name] = _text(value) if name == "result" else json.loads(value)
        doc["history"] = [json.loads(event) for event in events]
        return doc, marked

    async def wait(self, job_id: str, seconds: float) -> None:
        """See :meth:`ResultStore.wait`: blocks on the job's notify list, in slices of at most 2 s."""
        _, _, notify = self._keys(job_id)
        wait = max(0.01, min(seconds, _WAIT_SLICE))
        await self._redis.blmove(notify, notify, wait, "LEFT", "RIGHT")  # type: ignore[arg-type]  # Redis takes a float

    async def close(self) -> None:
        """Close the client when this store created it."""
        own, self._own, self._loop = self._own, None, None
        if own is not None:
            await own.aclose()

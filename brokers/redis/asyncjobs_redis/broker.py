"""The Redis broker: producer and admin side, and the connection every consumer shares."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from asyncjobs.broker import DeadLetter, DeadLetterInfo, OutgoingJob, QueueStats
from asyncjobs.clock import wall_time
from asyncjobs.envelope import peek_id
from asyncjobs.errors import BrokerError, BrokerURLError
from asyncjobs_redis.consumer import RedisConsumer
from asyncjobs_redis.errors import broker_errors
from asyncjobs_redis.keys import QueueKeys, queue_keys
from asyncjobs_redis.scripts import Scripts

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "asyncjobs"
DEFAULT_SOCKET_TIMEOUT = 10.0
ENQUEUE_CHUNK = 500  # jobs per script call: bounds one call's size and the server's time in it
MIN_SERVER = (6, 2)  # LPOP with a count


def _split_url(url: str) -> tuple[str, str, float]:
    """The client URL (without our own parameters), the key prefix and the socket timeout."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise BrokerURLError(f"not a Redis URL: {url!r}; expected redis://host:6379/0 or rediss://...")
    params = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in params if k == "prefix"), DEFAULT_PREFIX)
    if not prefix or any(c in prefix for c in "{}"):
        raise BrokerURLError(f"prefix={prefix!r} in {url!r}: use a non-empty name without braces")
    timeout_text = next((v for k, v in params if k == "socket_timeout"), None)
    try:
        timeout = DEFAULT_SOCKET_TIMEOUT if timeout_text is None else float(timeout_text)
    except ValueError:
        raise BrokerURLError(f"socket_timeout={timeout_text!r} in {url!r} is not a number of seconds") from None
    rest = [(k, v) for k, v in params if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix, timeout


async def _warn_if_evicting(client: Redis) -> None:
    """Log when the server may evict keys under memory pressure: evicted jobs are lost."""
    try:
        found: Any = next(iter((await client.config_get("maxmemory-policy")).values()), "")
    except (RedisError, OSError):  # CONFIG may be disabled (managed services): nothing to tell
        return
    policy = found.decode() if isinstance(found, bytes) else str(found)
    if policy.startswith("allkeys"):
        log.warning(
            "redis: maxmemory-policy is %s: under memory pressure the server deletes jobs; use noeviction",
            policy,
        )


def _client_options() -> dict[str, Any]:
    """Options for the redis-py versions that have them."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # an older redis-py without them
        return {}
    # With maintenance notifications on ("auto", the default), the pool skips its check for a
    # connection the server closed, so the first command after a server restart would fail.
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


class RedisBroker:
    """A broker on one Redis server (``redis://`` or ``rediss://``).

    Every state change of a job is one Lua script, so a job is always in exactly one place
    (ready, scheduled, leased or dead) and each lease is handed to one consumer. Lease
    deadlines and delays use the server's clock. ``?prefix=NAME`` in the URL puts every key
    under ``{NAME:QUEUE}`` (default ``asyncjobs``); other query parameters go to redis-py.
    Operations on a lost connection raise :class:`~asyncjobs.errors.BrokerConnectionError`.
    """

    supports_unique = True
    leases_expire = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0") -> None:
        self.url = url
        self._client_url, self.prefix, self.socket_timeout = _split_url(url)
        self._client: Redis | None = None
        self._scripts: Scripts | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle_tag = secrets.token_hex(6)
        self._handles = itertools.count(1)

    @classmethod
    def from_url(cls, url: str) -> RedisBroker:
        """A broker for ``url`` (not connected yet)."""
        return cls(url)

    def keys(self, queue: str) -> QueueKeys:
        """The keys of ``queue``."""
        return queue_keys(self.prefix, queue)

    def new_handle(self, job_id: str | None) -> str:
        """A handle no other stored job has: the job id, ``|``, a per-broker tag and counter."""
        return f"{job_id or ''}|{self._handle_tag}{next(self._handles):x}"

    def _current(self) -> bool:
        """Whether the pool exists and belongs to the running event loop."""
        if self._client is None:
            return False
        if self._loop is not asyncio.get_running_loop():
            # Connections belong to the loop that opened them; that loop is gone (a second
            # ``anyio.run`` with the same broker): start a new pool on this one.
            self._client = self._scripts = self._loop = None
            return False
        return True

    def _new_client(self) -> Redis:
        """The client of the server (the hook where a cluster broker makes its cluster client)."""
        return Redis.from_url(
            self._client_url,
            decode_responses=False,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=min(self.socket_timeout, 5.0),
            # A script whose reply was lost may have run: never re-send it behind the caller's back.
            retry=Retry(NoBackoff(), 0),
            **_client_options(),
        )

    async def connect(self) -> None:
        """Open the connection pool and check the server. Idempotent."""
        if self._current():
            return
        client = self._new_client()
        try:
            with broker_errors("connect"):
                info: dict[str, Any] = await client.info("server")
        except BrokerError:
            await client.aclose()
            raise
        version = tuple(int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2])
        if version < MIN_SERVER:
            await client.aclose()
            raise BrokerError(
                f"redis: server {info.get('redis_version')} is too old; asyncjobs-redis needs 6.2 or later"
            )
        await _warn_if_evicting(client)
        if self._current():  # another task connected meanwhile: keep theirs
            await client.aclose()
            return
        self._client, self._scripts, self._loop = client, Scripts(client), asyncio.get_running_loop()

    async def close(self) -> None:
        """Close the connection pool. Idempotent."""
        if not self._current():
            return
        client, self._client, self._scripts, self._loop = self._client, None, None, None
        if client is not None:
            await client.aclose()

    async def client(self) -> tuple[Redis, Scripts]:
        """The connected client and scripts, connecting on first use."""
        if not self._current():
            await self.connect()
        assert self._client is not None
        assert self._scripts is not None
        return self._client, self._scripts

    async def enqueue(self, jobs: Sequence[OutgoingJob]) -> list[bool]:
        """Store every job (one script call per 500 jobs); a taken unique key gives ``False``."""
        _, scripts = await self.client()
        stored: list[bool] = []
        for start in range(0, len(jobs), ENQUEUE_CHUNK):
            keys, args = self._enqueue_call(jobs[start : start + ENQUEUE_CHUNK])
            with broker_errors("enqueue"):
                reply = await scripts.enqueue(keys=keys, args=args)
            stored.extend(bool(r) for r in reply)
        return stored

    def _enqueue_call(self, jobs: Sequence[OutgoingJob]) -> tuple[list[str], list[Any]]:
        index: dict[str, int] = {}
        keys: list[str] = []
        unique: list[str] = []
        args: list[Any] = []
        now = wall_time()
        for job in jobs:
            qi = index.get(job.queue)
            if qi is None:
                qi = index[job.queue] = len(index) + 1
                keys.extend(self.keys(job.queue).job)
            delay = 0 if job.not_before is None else max(math.ceil((job.not_before - now) * 1000), 0)
            ttl = math.ceil(job.unique_ttl * 1000) if job.unique_key is not None and job.unique_ttl > 0 else 0
            if ttl:
                unique.append(self.keys(job.queue).unique(job.unique_key or ""))
            args += (qi, self.new_handle(job.id), job.body, delay, ttl)
        return keys + unique, [len(index), *args]

    async def consumer(self, queues: Sequence[str], *, prefetch: int, lease_seconds: float) -> RedisConsumer:
        """A consumer leasing jobs of ``queues`` (earlier queues first), at most ``prefetch`` at once."""
        await self.client()
        return RedisConsumer(self, list(queues), prefetch, lease_seconds)

    async def stats(self, queue: str) -> QueueStats:
        """Counts of ``queue`` in one read-only script call; due and expired jobs count as ready."""
        _, scripts = await self.client()
        keys = self.keys(queue)
        with broker_errors("stats"):
            ready, scheduled, in_flight, dead, age_ms = await scripts.stats(keys=[*keys.job, keys.dead[0]])
        return QueueStats(ready, scheduled, in_flight, dead, None if age_ms < 0 else age_ms / 1000)

    async def list_dead(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters of ``queue``, newest first."""
        if limit <= 0:
            return []
        _, scripts = await self.client()
        with broker_errors("list dead letters"):
            reply = await scripts.list_dead(keys=self.keys(queue).dead[:3], args=[limit])
        return [_dead_letter(queue, reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]

    async def get_dead(self, queue: str, dead_id: str) -> DeadLetter | None:
        """One dead letter by id, or ``None``."""
        client, _ = await self.client()
        _, body_key, info_key, _ = self.keys(queue).dead
        with broker_errors("get dead letter"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hget(body_key, dead_id)
                pipe.hget(info_key, dead_id)
                body, info = await pipe.execute()
        return None if body is None else _dead_letter(queue, dead_id.encode(), body, info or b"{}")

    async def replay_dead(self, queue: str, dead_id: str, body: bytes) -> bool:
        """Swap a dead letter for a ready job with ``body``, atomically. ``False`` if it is gone."""
        _, scripts = await self.client()
        keys = self.keys(queue)
        with broker_errors("replay dead letter"):
            done = await scripts.replay(
                keys=[*keys.job, *keys.dead], args=[dead_id, body, self.new_handle(peek_id(body))]
            )
        return bool(done)

    async def purge_dead(self, queue: str, dead_ids: Sequence[str] | None = None) -> int:
        """Delete the given dead letters (all when ``None``); how many were deleted."""
        if dead_ids is not None and not dead_ids:
            return 0
        _, scripts = await self.client()
        with broker_errors("purge dead letters"):
            count = await scripts.purge(keys=self.keys(queue).dead[:3], args=list(dead_ids or ()))
        return int(count)


def _dead_letter(queue: str, dead_id: bytes, body: bytes, info: bytes) -> DeadLetter:
    try:
        doc = json.loads(info)
    except ValueError:
        doc = {"reason": "unknown", "error_message": "the stored dead-letter info is not JSON"}
    return DeadLetter(dead_id.decode(), queue, body, DeadLetterInfo.from_json(doc if isinstance(doc, dict) else {}))

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

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from asyncjobs.broker import DeadLetter, DeadLetterInfo, OutgoingJob, QueueStats
from asyncjobs.clock import wall_time
from asyncjobs.envelope import peek_id
from asyncjobs.errors import BrokerError, PayloadTooLargeError
from asyncjobs_redis.consumer import RedisConsumer
from asyncjobs_redis.errors import broker_errors
from asyncjobs_redis.keys import QueueKeys, queue_keys
from asyncjobs_redis.scripts import Scripts
from asyncjobs_redis.url import parse_url

log = logging.getLogger(__name__)

ENQUEUE_CHUNK = 500  # jobs per script call: bounds one call's size and the server's time in it
ENQUEUE_BYTES = 64 * 1024 * 1024  # bodies per script call, at most (but always one job)
MAX_VALUE = 512 * 1024 * 1024  # the largest value a Redis server takes (proto-max-bulk-len)
MIN_SERVER = (6, 2)  # LPOP with a count


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
        parsed = parse_url(url)
        self._client_url, self.prefix = parsed.client_url, parsed.prefix
        self.socket_timeout, self.fetch_bytes = parsed.socket_timeout, parsed.fetch_bytes
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
        return f"{job_id or ''}|{self._handle_suffix()}"

    def _handle_suffix(self) -> str:
        return f"{self._handle_tag}{next(self._handles):x}"

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
                f"redis: server {info.get('redis_version')} is too old; the asyncjobs Redis broker needs 6.2 or later"
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
        """Store every job (one script call per 500 jobs or 64 MiB); a taken unique key gives ``False``.

        A body over 512 MiB, more than a Redis server takes, raises
        :class:`~asyncjobs.errors.PayloadTooLargeError` before anything is sent.
        """
        for job in jobs:
            if len(job.body) > MAX_VALUE:
                raise PayloadTooLargeError(
                    f"redis: job {job.id!r} is {len(job.body)} bytes, too large: a Redis server takes "
                    f"at most {MAX_VALUE} bytes (512 MiB) per value; nothing was enqueued"
                )
        _, scripts = await self.client()
        stored: list[bool] = []
        for chunk in _chunks(jobs):
            keys, args = self._enqueue_call(chunk)
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

    async def queue_exists(self, queue: str) -> bool:
        """Whether anything is stored under ``queue`` (a job in any state, a dead letter); reads only.

        Redis has no declared queues: a queue whose every job was done and acked leaves no key.
        """
        client, _ = await self.client()
        keys = self.keys(queue)
        with broker_errors("check the queue"):
            return bool(await client.exists(*keys.job, *keys.dead))

    async def list_dead(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters of ``queue``, newest first."""
        if limit <= 0:
            return []
        _, scripts = await self.client()
        with broker_errors("list dead letters"):
            reply = await scripts.list_dead(keys=self.keys(queue).dead[:3], args=[limit])
        return [_dead_letter(queue, reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]

    async def get_dead(self, queue: str, dead_id: str) -> DeadLetter | None:
        """One dead letter by the id :meth:`list_dead` shows, or ``None``.

        The first dead letter of a job has the job's id; a later one of the same id gets
        ``ID.N``. A plain job id with no entry of its own finds the newest ``ID.N``.
        """
        client, _ = await self.client()
        dead_key, body_key, info_key, _ = self.keys(queue).dead
        with broker_errors("get dead letter"):
            found = await self._read_dead(client, body_key, info_key, dead_id)
            if found is None:
                newest = await _newest_repeat(client, dead_key, dead_id)
                found = None if newest is None else await self._read_dead(client, body_key, info_key, newest)
        if found is None:
            return None
        return _dead_letter(queue, found[0].encode(), found[1], found[2])

    @staticmethod
    async def _read_dead(client: Redis, body_key: str, info_key: str, dead_id: str) -> tuple[str, bytes, bytes] | None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hget(body_key, dead_id)
            pipe.hget(info_key, dead_id)
            body, info = await pipe.execute()
        return None if body is None else (dead_id, body, info or b"{}")

    async def replay_dead(self, queue: str, dead_id: str, body: bytes) -> bool:
        """Swap a dead letter for a ready job with ``body``, atomically. ``False`` if it is gone.

        A body whose id cannot be read keeps the id of the dead letter (without a ``.N``).
        """
        _, scripts = await self.client()
        keys = self.keys(queue)
        with broker_errors("replay dead letter"):
            done = await scripts.replay(
                keys=[*keys.job, *keys.dead], args=[dead_id, body, peek_id(body) or "", self._handle_suffix()]
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


def _chunks(jobs: Sequence[OutgoingJob]) -> list[Sequence[OutgoingJob]]:
    """``jobs`` in runs of at most ENQUEUE_CHUNK jobs and ENQUEUE_BYTES of bodies (at least one job each)."""
    out: list[Sequence[OutgoingJob]] = []
    start, size = 0, 0
    for i, job in enumerate(jobs):
        if i > start and (i - start >= ENQUEUE_CHUNK or size + len(job.body) > ENQUEUE_BYTES):
            out.append(jobs[start:i])
            start, size = i, 0
        size += len(job.body)
    if start < len(jobs):
        out.append(jobs[start:])
    return out


async def _newest_repeat(client: Redis, dead_key: str, job_id: str) -> str | None:
    """The newest dead letter ``JOB_ID.N`` (``N``: the letter's sequence number), or ``None``."""
    pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in job_id) + ".*"
    newest: tuple[float, str] | None = None
    async for member, seq in client.zscan_iter(dead_key, match=pattern, count=1000):
        name = member.decode(errors="replace")
        base, _, n = name.rpartition(".")
        if base == job_id and n == str(int(seq)) and (newest is None or seq > newest[0]):
            newest = (seq, name)
    return None if newest is None else newest[1]


def _dead_letter(queue: str, dead_id: bytes, body: bytes, info: bytes) -> DeadLetter:
    try:
        doc = json.loads(info)
    except ValueError:
        doc = {"reason": "unknown", "error_message": "the stored dead-letter info is not JSON"}
    return DeadLetter(
        dead_id.decode(errors="backslashreplace"),
        queue,
        body,
        DeadLetterInfo.from_json(doc if isinstance(doc, dict) else {}),
    )

"""The Redis consumer: leases jobs of some queues to one worker, every step one script call."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from asyncjobs.broker import DeadLetterInfo, Delivery
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.errors import BrokerError
from asyncjobs_redis.errors import broker_errors
from asyncjobs_redis.keys import job_id_of
from asyncjobs_redis.resend import Requests

if TYPE_CHECKING:
    from asyncjobs_redis.broker import RedisBroker

log = logging.getLogger(__name__)

MAX_BLOCK = 5.0  # longest single server-side wait; bounded by the socket timeout too


class RedisConsumer:
    """Leases jobs of a :class:`~asyncjobs_redis.RedisBroker` to one worker.

    ``fetch`` runs one script that makes due scheduled jobs ready, puts expired leases of any
    consumer back, and leases up to the asked number; when nothing is ready it blocks on the
    server (``BLPOP`` of the queues' wake lists), not in a polling loop. ``extend``, ``ack``
    and ``release`` take many leases in one script call; every change is conditional on the
    lease token.

    A fetch or ack whose reply was lost is sent again under the name it first had, and the
    server answers as it did the first time (see :mod:`asyncjobs_redis.resend`): the leases of a
    lost fetch reply come with the next fetch, their delivery count unchanged, and an ack that went
    through is reported acked.
    """

    def __init__(self, broker: RedisBroker, queues: list[str], prefetch: int, lease_seconds: float) -> None:
        if not queues:
            raise ValueError("a consumer needs at least one queue")
        self._broker = broker
        self._queues = queues
        self._prefetch = prefetch
        self._lease_ms = max(math.ceil(lease_seconds * 1000), 1)
        # Each fetch starts with the next queue, so a backlog in one does not starve the others.
        self._token_prefix = secrets.token_hex(6) + "-"
        self._turns = [
            (order, [key for queue in order for key in broker.keys(queue).job], self._record(order[0], "fetch"))
            for order in (queues[turn:] + queues[:turn] for turn in range(len(queues)))
        ]
        self._turn = 0
        self._wake = [broker.keys(queue).wake for queue in queues]
        self._tokens = 0
        # By token: the leases this consumer holds and until when (local clock) it last knew so.
        self._held: dict[str, tuple[Delivery, float]] = {}
        self._max_block = min(MAX_BLOCK, broker.socket_timeout / 2)
        self._closed = False
        self._requests = Requests(self._token_prefix + "r")
        # The fetch whose call failed, so its reply may be lost: (name, its turn).
        self._unread: tuple[str, int] | None = None

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Lease up to ``max_count`` jobs, waiting on the server up to ``wait_seconds`` for one."""
        deadline = monotonic() + max(wait_seconds, 0.0)
        while not self._closed:
            room = self._room(max_count)
            if room <= 0:  # every lease slot is taken: nothing may be leased before one is freed
                await anyio.sleep(max(deadline - monotonic(), 0.0))
                return []
            got, next_due = await self._take(room)
            if got:
                return got
            remaining = deadline - monotonic()
            if remaining <= 0:
                return []
            block = remaining if next_due < 0 else min(remaining, next_due / 1000)
            await self._block(min(block, self._max_block))
        return []

    def _record(self, queue: str, kind: str) -> str:
        """This consumer's record key for ``kind`` (fetch, ack) calls whose keys start with ``queue``."""
        return self._broker.keys(queue).request(f"{self._token_prefix}{kind}")

    def _room(self, max_count: int) -> int:
        """How many leases may be taken now; leases whose deadline passed do not count."""
        if len(self._held) >= self._prefetch:
            # A lease the worker gave up without a broker call (the server was away past its
            # deadline) is held no more: forget it, or its slot would stay taken for good.
            now = monotonic()
            for token, (_, until) in list(self._held.items()):
                if until <= now:
                    del self._held[token]
        return min(max_count, self._prefetch - len(self._held))

    async def _take(self, room: int, *, resend_only: bool = False) -> tuple[list[Delivery], int]:
        """One fetch script call; a fetch whose reply was lost is sent again first, under its name."""
        client, scripts = await self._broker.client()
        unread, self._unread = self._unread, None  # taken: a concurrent fetch does not resend it too
        if unread is not None:
            (name, turn), replay = unread, 2 if resend_only else 1
        elif resend_only:
            return [], -1
        else:
            turn, replay = self._turn, 0
            self._turn = (turn + 1) % len(self._turns)
            name, _ = self._requests.name(None)
        order, keys, record = self._turns[turn]
        start, self._tokens = self._tokens, self._tokens + room
        until = monotonic() + self._lease_ms / 1000
        budget = self._broker.fetch_bytes
        args: list[Any] = [len(order), room, self._lease_ms, self._token_prefix, start, budget, name, replay]
        # Shielded: once the script has leased jobs, their deliveries must reach the caller.
        try:
            with anyio.CancelScope(shield=True), broker_errors("fetch"):
                reply = await scripts.fetch(keys=[*keys, record], args=args, client=client)
        except Exception:
            self._unread = (name, turn)  # it may have run: the next fetch sends it again under this name
            raise
        out: list[Delivery] = []
        for i in range(2, 2 + 5 * int(reply[1]), 5):
            qi, handle, raw_token, count, body = reply[i : i + 5]
            token = raw_token.decode()
            queue = order[qi - 1]
            try:
                job_id: str | None = job_id_of(handle)
            except UnicodeDecodeError:
                job_id = None
            unreadable = self._unreadable(queue, handle, job_id, count)
            delivery = Delivery(queue, job_id, body, token, count, handle, unreadable=unreadable)
            if unreadable is not None:
                log.error("%s; the worker dead-letters it as %s", unreadable[1], unreadable[0])
            self._held[token] = (delivery, until)
            out.append(delivery)
        if len(out) > room:  # a resent fetch brought back more than there is room for now
            with anyio.CancelScope(shield=True):
                await self.release(out[room:])
            del out[room:]
        return out, int(reply[0])

    def _unreadable(self, queue: str, handle: bytes, job_id: str | None, count: int) -> tuple[str, str] | None:
        """Why a job written by hand cannot be given to the worker as it is, or ``None``.

        ``malformed``: the id in the handle is not UTF-8. ``missing_body``: the handle was ready and
        no body came within the grace the fetch script gives (its delivery count is 0). The worker
        dead-letters such a job, bytes intact, beside the jobs fetched with it.
        """
        if job_id is None:
            why, reason = "the id in its handle is not UTF-8", "malformed"
        elif count == 0:
            key = self._broker.keys(queue).job[3]
            why, reason = f"its handle was ready but no body was stored under it in {key}", "missing_body"
        else:
            return None
        return reason, f"job with handle {handle!r}: {why}"

    async def _block(self, seconds: float) -> None:
        """Wait on the server until a job may be ready (a wake signal) or ``seconds`` pass."""
        if seconds <= 0:
            return
        client, _ = await self._broker.client()
        with broker_errors("fetch (waiting)"):
            await client.blpop(self._wake, timeout=max(round(seconds, 3), 0.001))

    def _batch(self, deliveries: Sequence[Delivery]) -> tuple[list[str], list[Any]]:
        """Keys of the queues the deliveries belong to, and (queue index, handle, token) per delivery."""
        index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = []
        for delivery in deliveries:
            qi = index.get(delivery.queue)
            if qi is None:
                qi = index[delivery.queue] = len(index) + 1
                keys.extend(self._broker.keys(delivery.queue).job)
            args += (qi, delivery.handle, delivery.token)
        return keys, [len(index), *args]

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Push back every lease still held by its token, in one script call."""
        if not deliveries:
            return []
        _, scripts = await self._broker.client()
        keys, args = self._batch(deliveries)
        args.insert(1, self._lease_ms)
        until = monotonic() + self._lease_ms / 1000
        with broker_errors("extend"):
            reply = await scripts.extend(keys=keys, args=args)
        result = [bool(r) for r in reply]
        for delivery, ok in zip(deliveries, result, strict=True):
            if not ok:
                self._held.pop(delivery.token, None)
            elif delivery.token in self._held:
                self._held[delivery.token] = (delivery, until)
        return result

    async def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove finished jobs whose lease is still held, in one script call.

        The same deliveries acked again after a connection error are the same request sent
        again: the jobs the first call removed are reported acked.
        """
        if not deliveries:
            return []
        _, scripts = await self._broker.client()
        keys, args = self._batch(deliveries)
        sent = tuple(delivery.token for delivery in deliveries)
        name, replay = self._requests.name(sent)
        args[1:1] = [name, int(replay), self._lease_ms]
        record = self._record(deliveries[0].queue, "ack")
        try:
            with broker_errors("ack"):
                reply = await scripts.ack(keys=[*keys, record], args=args)
        except BrokerError:
            self._requests.failed(sent, name)
            raise
        for delivery in deliveries:
            self._held.pop(delivery.token, None)
        return [bool(r) for r in reply]

    async def retry(self, delivery: Delivery, body: bytes, not_before: float | None) -> bool:
        """Swap the leased job for ``body`` (delivery count from 0 again), ready at ``not_before``."""
        _, scripts = await self._broker.client()
        delay = 0 if not_before is None else max(math.ceil((not_before - wall_time()) * 1000), 0)
        keys = self._broker.keys(delivery.queue).job
        with broker_errors("retry"):
            done = await scripts.retry(keys=keys, args=[delivery.handle, delivery.token, body, delay])
        self._held.pop(delivery.token, None)
        return bool(done)

    async def dead_letter(self, delivery: Delivery, info: DeadLetterInfo) -> bool:
        """Move the leased job, body intact, to the dead letters of its queue (kept under its job id)."""
        done = await self._dead_letter(delivery, info, delivery.job_id or self._shown_id(delivery.handle))
        self._held.pop(delivery.token, None)
        return done

    @staticmethod
    def _shown_id(handle: Any) -> str:
        """The id part of a handle that is not UTF-8, its bytes escaped (``\\xff``), to keep a dead letter under."""
        if isinstance(handle, bytes):
            return handle.rpartition(b"|")[0].decode("utf-8", "backslashreplace") or uuid.uuid4().hex
        return uuid.uuid4().hex

    async def _dead_letter(self, delivery: Delivery, info: DeadLetterInfo, dead_id: str) -> bool:
        _, scripts = await self._broker.client()
        keys = self._broker.keys(delivery.queue)
        args = [delivery.handle, delivery.token, dead_id, json.dumps(info.to_json(), default=str)]
        with broker_errors("dead-letter"):
            return bool(await scripts.dead_letter(keys=[*keys.job, *keys.dead], args=args))

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give leased jobs back to the front of ready at once; the delivery does not count."""
        for delivery in deliveries:
            self._held.pop(delivery.token, None)
        if not deliveries:
            return
        _, scripts = await self._broker.client()
        keys, args = self._batch(deliveries)
        with broker_errors("release"):
            await scripts.release(keys=keys, args=args)

    async def close(self) -> None:
        """Stop fetching and give back every lease still held; a failure is logged (they expire)."""
        self._closed = True
        if self._unread is not None:  # a fetch whose reply was lost: take its leases to give them back
            with contextlib.suppress(BrokerError):
                await self._take(self._prefetch, resend_only=True)
        held, self._held = [delivery for delivery, _ in self._held.values()], {}
        if not held:
            return
        try:
            await self.release(held)
        except BrokerError as exc:
            log.warning(
                "could not give back %d jobs on close (%s); they return when their leases expire", len(held), exc
            )

"""The in-memory broker: the embedded default (``memory://``), with a real broker's semantics.

Leases with tokens and deadlines, redelivery of expired leases with a raised delivery count,
scheduled jobs, unique keys with a TTL and dead letters behave as on Redis, so a test written
against this broker holds against the others. Jobs live in this process only: a crash loses
them. ``memory://NAME`` gives a separate broker per name; the same URL in one process is the same
broker, so an app's producer and worker share it.

A memory broker is bounded, so a runaway producer gets an error instead of eating the process's
memory: at most ``max_jobs`` jobs (ready, scheduled, in flight and dead letters together; default
100,000) and ``max_bytes`` bytes of bodies (default 256 MiB). ``memory://?max_jobs=1000000&max_bytes=1073741824``
raises them. An enqueue past either bound stores nothing of its batch and raises
:class:`~asyncjobs.errors.QueueFullError`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import anyio

from asyncjobs.broker import DeadLetter, DeadLetterInfo, Delivery, OutgoingJob, QueueStats
from asyncjobs.clock import monotonic, wall_time
from asyncjobs.envelope import Envelope, peek_id, reads_back_equal
from asyncjobs.errors import BrokerURLError, QueueFullError
from asyncjobs.memory_alone import ProducerOnlyWatch

_IDLE_WAKE = 0.5  # upper bound on a sleep, so leases of vanished consumers are reaped
_LEASE_GARBAGE = 1024  # entries of settled leases tolerated beyond twice the live ones before a compaction
MAX_JOBS = 100_000  # default bound on the jobs (and dead letters) one memory broker holds
MAX_BYTES = 256 * 1024 * 1024  # default bound on the bytes of their bodies


@dataclass(slots=True)
class _Stored:
    queue: str
    job_id: str | None
    body: bytes
    delivery_count: int = 0
    token: str | None = None
    deadline: float = 0.0
    ready_since: float = 0.0
    envelope: Envelope | None = None  # what body decodes to, when the producer's own envelope can stand for it
    unique_key: str | None = None  # the enqueue-time key it holds: freed when the job is dead-lettered


@dataclass
class _Queue:
    ready: deque[int] = field(default_factory=deque)
    scheduled: list[tuple[float, int]] = field(default_factory=list)
    leased: list[tuple[float, int, str]] = field(default_factory=list)
    in_flight: int = 0
    dead: OrderedDict[str, DeadLetter] = field(default_factory=OrderedDict)


class MemoryBroker:
    """A broker held in this process's memory. Safe for many consumers on one event loop."""

    supports_unique = True
    _instances: dict[str, MemoryBroker] = {}

    def __init__(self, url: str = "memory://", *, max_jobs: int = MAX_JOBS, max_bytes: int = MAX_BYTES) -> None:
        if max_jobs < 1 or max_bytes < 1:
            raise BrokerURLError(f"memory:// needs max_jobs and max_bytes >= 1, got {max_jobs} and {max_bytes}")
        self.url = url
        self.max_jobs, self.max_bytes = max_jobs, max_bytes
        self._bytes = 0  # bytes of the bodies held: live jobs and dead letters
        self._dead_count = 0
        self._jobs: dict[int, _Stored] = {}
        self._queues: dict[str, _Queue] = {}
        self._unique: dict[str, float] = {}  # unique key -> when it expires (monotonic)
        self._unique_expiry: list[tuple[float, str]] = []  # the same, as a heap: expired keys are dropped
        self._dead_seq = itertools.count(2)
        self._seq = itertools.count(1)
        self._token_prefix = uuid.uuid4().hex[:8] + "-"
        self._wakeup: anyio.Event | None = None
        self._wakeup_loop: asyncio.AbstractEventLoop | None = None
        me = weakref.ref(self)  # the watch must not keep a dropped broker and its jobs alive
        self.watch = ProducerOnlyWatch(url, lambda: len(b._jobs) if (b := me()) is not None else 0)

    @classmethod
    def from_url(cls, url: str) -> MemoryBroker:
        """The process-wide broker for ``url`` (``memory://`` or ``memory://NAME``, with ``?max_jobs=&max_bytes=``)."""
        parts = urlsplit(url)
        name = parts.netloc or "default"
        limits = {"max_jobs": MAX_JOBS, "max_bytes": MAX_BYTES}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in limits:
                raise BrokerURLError(f"memory:// has no option {key!r}; it takes max_jobs and max_bytes")
            if not value.isdigit() or int(value) < 1:
                raise BrokerURLError(f"memory:// option {key} must be a whole number >= 1, got {value!r}")
            limits[key] = int(value)
        if parts.path not in ("", "/"):
            raise BrokerURLError(f"memory:// URL takes no path, got {parts.path!r}; name a broker with memory://NAME")
        broker = cls._instances.get(name)
        if broker is None:
            broker = cls._instances[name] = cls(url, **limits)
        elif parts.query and (broker.max_jobs, broker.max_bytes) != (limits["max_jobs"], limits["max_bytes"]):
            raise BrokerURLError(
                f"memory://{parts.netloc} already exists in this process with max_jobs={broker.max_jobs} "
                f"max_bytes={broker.max_bytes}; one URL, one set of limits"
            )
        return broker

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close; the jobs stay for the next user of this URL in this process."""

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    def _notify(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def _store(
        self,
        queue: str,
        job_id: str | None,
        body: bytes,
        not_before: float | None,
        env: Envelope | None = None,
        unique_key: str | None = None,
    ) -> None:
        seq = next(self._seq)
        now = monotonic()
        self._bytes += len(body)
        stored = self._jobs[seq] = _Stored(queue, job_id, body, ready_since=now, envelope=env, unique_key=unique_key)
        q = self._queue(queue)
        delay = 0.0 if not_before is None else not_before - wall_time()
        if delay > 0:
            heapq.heappush(q.scheduled, (now + delay, seq))
            stored.ready_since = now + delay
        else:
            q.ready.append(seq)

    async def enqueue(self, jobs: Sequence[OutgoingJob]) -> list[bool]:
        """Store every job; a taken unique key makes that job a no-op (``False``).

        A job whose :attr:`~asyncjobs.broker.OutgoingJob.envelope` reads back equal from its body
        is delivered with that envelope, so the worker does not parse bytes made in this process.
        """
        self.watch.enqueued()
        now = monotonic()
        self._check_room(jobs)
        accepted: list[bool] = []
        for job in jobs:
            if job.unique_key is not None:
                self._forget_expired_keys(now)
                expires = self._unique.get(job.unique_key)
                if expires is not None and expires > now:
                    accepted.append(False)
                    continue
                self._unique[job.unique_key] = now + job.unique_ttl
                heapq.heappush(self._unique_expiry, (now + job.unique_ttl, job.unique_key))
            env = job.envelope
            # The body stays the job (dead letters, inspection); the envelope only spares the worker a parse.
            self._store(
                job.queue,
                job.id,
                job.body,
                job.not_before,
                env if env is not None and reads_back_equal(env) else None,
                job.unique_key,
            )
            accepted.append(True)
        self._notify()
        return accepted

    def _check_room(self, jobs: Sequence[OutgoingJob]) -> None:
        """Refuse the whole batch when it would take this broker past ``max_jobs`` or ``max_bytes``."""
        held = len(self._jobs) + self._dead_count
        size = self._bytes + sum(len(job.body) for job in jobs)
        if held + len(jobs) > self.max_jobs or size > self.max_bytes:
            raise QueueFullError(
                f"memory:// is full: it holds {held} jobs and {self._bytes} bytes, and {len(jobs)} more "
                f"would pass max_jobs={self.max_jobs} or max_bytes={self.max_bytes}; nothing of this batch was "
                "stored. Run a worker on it, raise the limits (memory://?max_jobs=N&max_bytes=N), or use a "
                "real broker"
            )

    def _forget_expired_keys(self, now: float) -> None:
        """Drop unique keys whose TTL is over, so they do not pile up in memory."""
        heap, unique = self._unique_expiry, self._unique
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            if unique.get(key) == expires:
                del unique[key]

    def _dead_letter(self, stored: _Stored, info: DeadLetterInfo) -> None:
        """Keep ``stored`` among its queue's dead letters, under an id of its own, and free its unique key."""
        dead = self._queue(stored.queue).dead
        dead_id = stored.job_id or uuid.uuid4().hex
        if dead_id in dead:  # the same job id dead again (replayed, or reused by a producer): keep both
            dead_id = f"{dead_id}.{next(self._dead_seq)}"
        dead[dead_id] = DeadLetter(dead_id, stored.queue, stored.body, info)
        self._bytes += len(stored.body)
        self._dead_count += 1
        if stored.unique_key is not None and self._unique.pop(stored.unique_key, None) is not None:
            self._unique_expiry = [entry for entry in self._unique_expiry if entry[1] != stored.unique_key]
            heapq.heapify(self._unique_expiry)

    async def consumer(self, queues: Sequence[str], *, prefetch: int, lease_seconds: float) -> MemoryConsumer:
        """A consumer over ``queues``; ``prefetch`` bounds how many leases one fetch takes."""
        self.watch.consumer_opened()
        return MemoryConsumer(self, list(queues), prefetch, lease_seconds)

    def _promote(self, queue: _Queue, now: float) -> float | None:
        """Due scheduled jobs and expired leases back to ready; the next time to look again."""
        while queue.scheduled and queue.scheduled[0][0] <= now:
            _, seq = heapq.heappop(queue.scheduled)
            queue.ready.append(seq)
        while queue.leased and queue.leased[0][0] <= now:
            _deadline, seq, token = heapq.heappop(queue.leased)
            stored = self._jobs.get(seq)
            if stored is None or stored.token != token:
                continue  # settled, or re-leased under a newer token
            if stored.deadline > now:  # extended since: requeue the newer deadline
                heapq.heappush(queue.leased, (stored.deadline, seq, token))
                continue
            stored.token = None
            stored.ready_since = now
            queue.in_flight -= 1
            queue.ready.appendleft(seq)
        nexts = [heap[0][0] for heap in (queue.scheduled, queue.leased) if heap]
        return min(nexts) if nexts else None

    def expire_leases(self) -> int:
        """End every current lease now, as if its worker had vanished (for tests); returns how many.

        The next fetch of any consumer redelivers those jobs, with their delivery count raised.
        """
        expired = 0
        for seq, stored in self._jobs.items():
            if stored.token is not None and stored.deadline > 0.0:
                stored.deadline = 0.0
                heapq.heappush(self._queue(stored.queue).leased, (0.0, seq, stored.token))
                expired += 1
        self._notify()
        return expired

    def _take(self, queues: Sequence[str], max_count: int, lease_seconds: float) -> tuple[list[Delivery], float | None]:
        now = monotonic()
        out: list[Delivery] = []
        wake: float | None = None
        for name in queues:
            queue = self._queue(name)
            nxt = self._promote(queue, now)
            if nxt is not None:
                wake = nxt if wake is None else min(wake, nxt)
            take = min(max_count - len(out), len(queue.ready))
            if take > 0:
                queue.in_flight += take
                self._lease(queue, name, take, now + lease_seconds, out)
            if len(queue.leased) > 2 * queue.in_flight + _LEASE_GARBAGE:
                self._compact(queue)
        return out, wake

    def _lease(self, queue: _Queue, name: str, count: int, deadline: float, out: list[Delivery]) -> None:
        """Lease the first ``count`` ready jobs of ``queue`` until ``deadline``, each under a new token."""
        ready, jobs, leased, prefix, seqs = queue.ready.popleft, self._jobs, queue.leased, self._token_prefix, self._seq
        push, append = heapq.heappush, out.append
        for _ in range(count):
            seq = ready()
            stored = jobs[seq]
            stored.delivery_count = count_now = stored.delivery_count + 1
            stored.token = token = f"{prefix}{next(seqs)}"
            stored.deadline = deadline
            push(leased, (deadline, seq, token))
            append(Delivery(name, stored.job_id, stored.body, token, count_now, seq, None, stored.envelope))

    def _compact(self, queue: _Queue) -> None:
        """Drop the lease entries of settled jobs (each would otherwise stay until its lease's end)."""
        jobs = self._jobs
        live = [entry for entry in queue.leased if (s := jobs.get(entry[1])) is not None and s.token == entry[2]]
        heapq.heapify(live)
        queue.leased = live

    async def _wait(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if self._wakeup is None or self._wakeup_loop is not loop:  # a broker can outlive an event loop
            self._wakeup, self._wakeup_loop = anyio.Event(), loop
        with anyio.move_on_after(seconds):
            await self._wakeup.wait()

    def _leased(self, deliveries: Sequence[Delivery]) -> list[_Stored | None]:
        """Per delivery, its stored job while the lease holds (same token, deadline not passed), else ``None``."""
        now, jobs = monotonic(), self._jobs
        found: list[_Stored | None] = []
        for delivery in deliveries:
            stored = jobs.get(delivery.handle)
            found.append(
                stored if stored is not None and stored.token == delivery.token and stored.deadline > now else None
            )
        return found

    def _settle(self, deliveries: Sequence[Delivery]) -> list[_Stored | None]:
        """Remove the jobs whose lease holds, as :meth:`_leased` finds them; ``None`` for a lease that does not."""
        jobs, queues = self._jobs, self._queues
        found = self._leased(deliveries)
        for i, (delivery, stored) in enumerate(zip(deliveries, found, strict=True)):
            if stored is not None:
                if jobs.pop(delivery.handle, None) is None:  # named twice in one call: settled by the first
                    found[i] = None
                else:
                    queues[stored.queue].in_flight -= 1
                    self._bytes -= len(stored.body)
        return found

    async def queue_exists(self, queue: str) -> bool:
        """Whether this broker has seen ``queue`` (a job or a consumer on it); creates nothing."""
        return queue in self._queues

    async def stats(self, queue: str) -> QueueStats:
        """Counts of ``queue`` and the age of its oldest ready job."""
        q = self._queue(queue)
        self._promote(q, monotonic())
        oldest = monotonic() - self._jobs[q.ready[0]].ready_since if q.ready else None
        return QueueStats(len(q.ready), len(q.scheduled), q.in_flight, len(q.dead), oldest)

    async def list_dead(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Newest first."""
        return list(reversed(self._queue(queue).dead.values()))[:limit]

    async def get_dead(self, queue: str, dead_id: str) -> DeadLetter | None:
        """One dead letter by the id :meth:`list_dead` shows.

        The first dead letter of a job has the job's id; a later one of the same id gets
        ``ID.N``. A plain job id with no entry of its own finds the newest ``ID.N``.
        """
        dead = self._queue(queue).dead
        found = dead.get(dead_id)
        if found is None:
            found = next((d for d in reversed(dead.values()) if d.id.rpartition(".")[0] == dead_id), None)
        return found

    async def replay_dead(self, queue: str, dead_id: str, body: bytes) -> bool:
        """Atomically swap a dead letter for a ready job with ``body``."""
        dead = self._queue(queue).dead.pop(dead_id, None)
        if dead is None:
            return False
        self._forget_dead([dead])
        self._store(queue, peek_id(body), body, None)
        self._notify()
        return True

    async def purge_dead(self, queue: str, dead_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters."""
        dead = self._queue(queue).dead
        if dead_ids is None:
            gone = list(dead.values())
            dead.clear()
        else:
            gone = [d for i in dict.fromkeys(dead_ids) if (d := dead.pop(i, None)) is not None]
        self._forget_dead(gone)
        return len(gone)

    def _forget_dead(self, gone: Sequence[DeadLetter]) -> None:
        self._dead_count -= len(gone)
        self._bytes -= sum(len(d.body) for d in gone)


class MemoryConsumer:
    """Leases jobs of a :class:`MemoryBroker` to one worker."""

    def __init__(self, broker: MemoryBroker, queues: list[str], prefetch: int, lease_seconds: float) -> None:
        self._broker = broker
        self._queues = queues
        self._turn = 0  # each fetch starts with the next queue: a backlog in one does not starve the rest
        self._prefetch = prefetch
        self._lease = lease_seconds
        self._held: dict[int, Delivery] = {}
        self._closed = False

    async def fetch(self, max_count: int, wait_seconds: float) -> list[Delivery]:
        """Lease up to ``max_count`` jobs, waiting for one up to ``wait_seconds``."""
        deadline = monotonic() + wait_seconds
        while not self._closed:
            if len(self._held) >= self._prefetch:
                self._prune()
            room = min(max_count, self._prefetch - len(self._held))
            queues = self._queues[self._turn :] + self._queues[: self._turn]
            self._turn = (self._turn + 1) % len(queues)
            out, wake = self._broker._take(queues, room, self._lease) if room > 0 else ([], None)
            if out:
                for delivery in out:
                    self._held[delivery.handle] = delivery
                return out
            now = monotonic()
            if now >= deadline:
                return []
            sleep = min(deadline - now, _IDLE_WAKE if wake is None else max(wake - now, 0.0))
            await self._broker._wait(sleep)
        return []

    async def extend(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Push back each deadline by the lease length while the token still holds."""
        deadline = monotonic() + self._lease
        found = self._broker._leased(deliveries)
        for delivery, stored in zip(deliveries, found, strict=True):
            if stored is not None:
                stored.deadline = deadline
            else:
                self._held.pop(delivery.handle, None)  # lost: its slot is free again
        return [stored is not None for stored in found]

    def _prune(self) -> None:
        """Forget leases that ended (expired or taken over): they no longer use a prefetch slot."""
        held = list(self._held.values())
        for delivery, stored in zip(held, self._broker._leased(held), strict=True):
            if stored is None:
                del self._held[delivery.handle]

    def _settled(self, delivery: Delivery) -> _Stored | None:
        self._held.pop(delivery.handle, None)
        [stored] = self._broker._settle((delivery,))
        return stored

    async def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove finished jobs."""
        forget = self._held.pop
        for delivery in deliveries:
            forget(delivery.handle, None)
        return [stored is not None for stored in self._broker._settle(deliveries)]

    async def retry(self, delivery: Delivery, body: bytes, not_before: float | None) -> bool:
        """Swap the leased job for its next attempt."""
        stored = self._settled(delivery)
        if stored is None:
            return False
        self._broker._store(stored.queue, stored.job_id, body, not_before, unique_key=stored.unique_key)
        self._broker._notify()
        return True

    async def dead_letter(self, delivery: Delivery, info: DeadLetterInfo) -> bool:
        """Move the leased job to the dead letters of its queue."""
        stored = self._settled(delivery)
        if stored is None:
            return False
        self._broker._dead_letter(stored, info)
        return True

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Back to the front of ready, not counted as a delivery."""
        for delivery in deliveries:
            self._held.pop(delivery.handle, None)
            [stored] = self._broker._leased((delivery,))  # one at a time: a delivery named twice goes back once
            if stored is None:
                continue
            queue = self._broker._queue(stored.queue)
            stored.token = None
            stored.delivery_count -= 1
            stored.ready_since = monotonic()
            queue.in_flight -= 1
            queue.ready.appendleft(delivery.handle)
        self._broker._notify()

    async def close(self) -> None:
        """Release everything still held."""
        self._closed = True
        await self.release(list(self._held.values()))

"""Lease keeping: one batched heartbeat for every held lease, and the loop-stall detector."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from asyncjobs import instruments
from asyncjobs.attempt import Attempt
from asyncjobs.broker import Consumer, Delivery
from asyncjobs.clock import monotonic
from asyncjobs.errors import BrokerError

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Extends every held lease in one broker call per heartbeat.

    A lease the broker reports as lost is cancelled with reason ``lease_lost`` at once: the job
    may already run elsewhere, so it must not be acked. When the broker cannot be reached, leases
    are kept as long as their last confirmed deadline lasts, then given up the same way.
    """

    def __init__(self, consumer: Consumer, lease_seconds: float, interval: float) -> None:
        self._consumer = consumer
        self._lease = lease_seconds
        self._interval = interval
        self.held: dict[Delivery, Attempt] = {}

    def add(self, deliveries: Sequence[Delivery]) -> list[Attempt]:
        """Start keeping the leases of new deliveries."""
        until, held = monotonic() + self._lease, self.held
        added = [Attempt(delivery, until) for delivery in deliveries]
        held.update(zip(deliveries, added, strict=True))
        return added

    def remove(self, attempts: Iterable[Attempt]) -> None:
        """Stop keeping these leases (settled, released or lost)."""
        forget = self.held.pop
        for attempt in attempts:
            forget(attempt.delivery, None)

    async def run(self) -> None:
        """Beat every ``interval`` seconds until cancelled (no-op loop when heartbeats are off)."""
        if self._interval <= 0:
            return
        while True:
            await anyio.sleep(self._interval)
            await self.beat()

    async def beat(self) -> None:
        """Extend every held lease now, in one round trip."""
        items = [h for h in self.held.values() if not h.lost]
        if not items:
            return
        sent_at = monotonic()
        try:
            results = await self._consumer.extend([h.delivery for h in items])
        except (BrokerError, ConnectionError, OSError) as exc:
            log.warning("lease extension failed (%s); %d leases kept until their deadline", exc, len(items))
            for held in items:
                if monotonic() >= held.confirmed_until:
                    self._lose(held, "its deadline passed while the broker was unreachable")
            return
        extended = 0
        for held, ok in zip(items, results, strict=True):
            if held.phase == "settling" or held.delivery not in self.held:
                continue  # settled while the extension was in flight: nothing to lose
            if ok:
                held.confirmed_until = sent_at + self._lease
                extended += 1
            else:
                self._lose(held, "the broker reports the lease is no longer ours")
        if extended:
            instruments.leases_extended.add(extended)

    def _lose(self, held: Attempt, why: str) -> None:
        if held.lost:
            return
        held.cancel("lease_lost")
        instruments.leases_lost.add(1)
        log.error("lease lost for %s: %s; cancelling its handler, it will not be acked", held.describe(), why)


@dataclass(slots=True)
class Slot:
    """What one runner task is running now (``None`` between jobs)."""

    held: Attempt | None = None


class StallDetector:
    """Notices when the event loop is blocked and names the job whose code blocked it.

    The loop refreshes a timestamp every ``threshold/4``; a thread looks at it every ``threshold/2``
    and, when it is stale (the loop is blocked), notes which task the loop is running. When the
    loop gets going again more than ``threshold`` late, the stall is reported with the job that
    task was processing. Blocked loops stop every heartbeat of the worker, so this is logged as an
    error and counted. The thread wakes only twice per threshold: each wake makes it wait for the
    interpreter lock, which costs the busy loop a little, so it looks no more often than it must
    to catch every stall longer than ``threshold`` while it lasts.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.slots: dict[asyncio.Task[Any], Slot] = {}
        self.stalls = 0
        self._tick = monotonic()
        self._stop = threading.Event()
        self._culprit: tuple[float, str | None] | None = None  # (the stale timestamp, who ran then)

    def slot(self, task: asyncio.Task[Any] | None) -> Slot:
        """The slot in which the runner ``task`` shows the job it is running (set per job: no dict write)."""
        slot = Slot()
        if task is not None:
            self.slots[task] = slot
        return slot

    @property
    def jobs(self) -> dict[asyncio.Task[Any], Attempt]:
        """The job each runner task is running now."""
        return {task: slot.held for task, slot in self.slots.items() if slot.held is not None}

    async def run(self) -> None:
        """Refresh the timestamp until cancelled, with the watchdog thread running alongside."""
        loop = asyncio.get_running_loop()
        watchdog = threading.Thread(target=self._watch, args=(loop,), name="asyncjobs-stall-watch", daemon=True)
        watchdog.start()
        step = self.threshold / 4
        self._tick = monotonic()
        try:
            while True:
                before = self._tick
                await anyio.sleep(step)
                self._tick = now = monotonic()
                lag = now - before - step
                if lag > self.threshold:
                    self._report(lag, before)
        finally:
            self._stop.set()

    def _report(self, lag: float, since: float) -> None:
        self.stalls += 1
        seen = self._culprit
        culprit = seen[1] if seen is not None and seen[0] == since else None  # noted during this stall only
        instruments.loop_stalls.add(1)
        instruments.loop_stall_seconds.record(lag)
        log.error(
            "event loop blocked for %.2fs by %s: heartbeats stopped meanwhile; run blocking code with "
            "asyncjobs.run_sync (a thread)",
            lag,
            culprit or "code outside any job",
        )

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        half = self.threshold / 2
        while not self._stop.wait(half):
            tick = self._tick
            seen = self._culprit
            if monotonic() - tick > half and (seen is None or seen[0] != tick):
                task = asyncio.current_task(loop)
                slot = self.slots.get(task) if task is not None else None
                held = slot.held if slot is not None else None
                self._culprit = (tick, held.describe() if held else (f"task {task.get_name()}" if task else None))

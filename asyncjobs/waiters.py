"""Parking tasks until another task has work for them: cheaper than an event on the hot path."""

from __future__ import annotations

import asyncio
from collections import deque


class Waiters:
    """Tasks parked until woken: one at a time (:meth:`wake_one`) or all together.

    Cheaper than an event on the hot path: waking costs nothing when nobody waits, nothing is made
    anew per wake-up, and waking one task (a runner per batch of jobs, the ack batcher per batch of
    acks) rather than all of them spares the rest a pointless trip round the loop.
    """

    __slots__ = ("_woken", "parked")

    def __init__(self) -> None:
        self.parked: deque[asyncio.Future[bool]] = deque()
        self._woken = 0  # woken by wake_one and not yet running again

    def __bool__(self) -> bool:
        return bool(self.parked)

    async def wait(self) -> None:
        """Park until woken (or cancelled)."""
        parked = asyncio.get_running_loop().create_future()
        self.parked.append(parked)
        try:
            await parked
        finally:
            if parked.done() and not parked.cancelled() and parked.result():
                self._woken -= 1
            elif not parked.done():
                parked.cancel()

    def wake_one(self) -> None:
        """Make sure one parked task is on its way: wake one, unless one woken this way has not run yet."""
        parked = self.parked
        while parked and not self._woken:
            waiter = parked.popleft()
            if not waiter.done():
                waiter.set_result(True)
                self._woken += 1

    def wake_all(self) -> None:
        """Wake every parked task."""
        parked, self.parked = self.parked, deque()
        for waiter in parked:
            if not waiter.done():
                waiter.set_result(False)

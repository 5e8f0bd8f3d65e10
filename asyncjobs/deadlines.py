"""Job deadlines: one timer for all the jobs a worker runs, not one per job.

Each job still runs in its own cancel scope (opened by the timeout middleware); what this saves
is the event-loop timer every scope with a deadline would arm and disarm. Jobs mostly finish long
before their deadline, so the timer rarely fires: when it does, it cancels the scopes of the jobs
that are due and is armed again for the earliest deadline left.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncjobs.leases import Held


class Deadlines:
    """Cancels the scope of each running job whose deadline (event-loop time) has passed."""

    def __init__(self) -> None:
        self.running: set[Held] = set()  # jobs with a deadline; a job that ends is discarded from it
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bound: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Keep time on ``loop`` from now on without looking it up per job (``None``: look it up each time).

        A worker binds its loop for as long as it runs; jobs of this object must then run on it.
        """
        self._bound = loop

    def add(self, held: Held, timeout: float) -> None:
        """Cancel ``held``'s scope ``timeout`` seconds from now, unless it is discarded from :attr:`running` first."""
        loop = self._bound or asyncio.get_running_loop()
        deadline = held.deadline = loop.time() + timeout
        self.running.add(held)
        if deadline < self._at or loop is not self._loop:
            self._arm(deadline, loop)

    def _arm(self, at: float, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at, self._loop = at, loop
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        loop, self._timer, self._at = self._loop, None, math.inf
        assert loop is not None
        now = loop.time()
        earliest = math.inf
        for held in list(self.running):
            if held.deadline <= now:
                self.running.discard(held)
                held.cancel()
            elif held.deadline < earliest:
                earliest = held.deadline
        if earliest < math.inf:
            self._arm(earliest, loop)

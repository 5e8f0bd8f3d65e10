"""Messages a consumer received but has not handed out: in arrival order, or held here until due.

A message due in less than the smallest delay bucket is held here (it keeps its prefetch slot)
until it is due, measured on this host's monotonic clock from when it was admitted. When its hold
ends it is due: its headers are not read again (where the publisher's clock disagrees with this
host's, the wait left is the carried delay, which no clock here counts down, so a second reading
would hold it again, and again).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Iterable

import anyio
from aiormq.abc import DeliveredMessage

from asyncjobs.clock import monotonic
from asyncjobs_rabbitmq import wire

Item = tuple[str, DeliveredMessage]
"""A received message and the asyncjobs queue it came from."""


class Inbox:
    """The consumer's buffer of received messages (see the module doc)."""

    def __init__(self) -> None:
        self._ready: deque[Item] = deque()
        self._waiting: list[tuple[float, int, str, DeliveredMessage]] = []  # (due, serial, queue, message)
        self._serial = itertools.count()
        self._arrived = asyncio.Event()
        self._held_out: dict[int, DeliveredMessage] = {}  # id -> message whose hold ended, until admitted

    def put(self, queue: str, message: DeliveredMessage) -> None:
        """A message came in."""
        self._ready.append((queue, message))
        self._arrived.set()

    def put_back(self, items: Iterable[Item]) -> None:
        """Messages taken out but not admitted go back to the front, in their order."""
        self._ready.extendleft(reversed(list(items)))

    def hold(self, seconds: float, queue: str, message: DeliveredMessage) -> None:
        """Keep ``message`` here for ``seconds``, then hand it out first."""
        heapq.heappush(self._waiting, (monotonic() + seconds, next(self._serial), queue, message))

    def pop(self) -> Item | None:
        """The next message to admit (those held until now first), or ``None``."""
        now = monotonic()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, queue, message = heapq.heappop(self._waiting)
            self._held_out[id(message)] = message
            self._ready.appendleft((queue, message))
        return self._ready.popleft() if self._ready else None

    def hold_ended(self, message: DeliveredMessage) -> bool:
        """Whether ``message`` comes out of a hold here (so it is due now); asked once per hold."""
        return self._held_out.pop(id(message), None) is not None

    async def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a message to come in or a held one to come due."""
        if self._ready:
            return
        if self._waiting:
            seconds = min(seconds, max(self._waiting[0][0] - monotonic(), 0.0))
        self._arrived.clear()
        with anyio.move_on_after(seconds):
            await self._arrived.wait()

    def wake(self) -> None:
        """End a :meth:`wait` now (the consumer closes)."""
        self._arrived.set()

    @property
    def held(self) -> int:
        """How many messages are held until due."""
        return len(self._waiting)

    def counts(self, queue: str) -> tuple[int, int]:
        """Messages of ``queue`` buffered here (their channel open): ready, and early (scheduled)."""
        ready = scheduled = 0
        scheduled += sum(1 for _, _, name, m in self._waiting if name == queue and not m.channel.is_closed)
        for name, message in self._ready:
            if name != queue or message.channel.is_closed:
                continue
            remaining = wire.remaining_of(wire.headers_of(message))
            if remaining is not None and remaining > 0:
                scheduled += 1
            else:
                ready += 1
        return ready, scheduled

    def drain(self) -> list[Item]:
        """Every message buffered here whose channel is open; the buffer is empty afterwards."""
        items = [*self._ready, *((queue, message) for _, _, queue, message in self._waiting)]
        self._ready.clear()
        self._waiting.clear()
        self._held_out.clear()
        return [(queue, message) for queue, message in items if not message.channel.is_closed]
